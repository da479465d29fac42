"""Which language a message is in: saved choice, kana, a detector with weights in its wheel, hint.

pycld2 (CLD2's tables are compiled into the extension) reads 11/11 of the shipped languages on
short chat messages (research/translation-and-language.md). Scripts decide first where they can:
any kana is Japanese, hangul is Korean, Devanagari is Nepali (the only shipped language in it).
"""

from __future__ import annotations

import re
import unicodedata

import pycld2

from bot.languages import DEFAULT_LANGUAGE, LANGUAGES

_KANA = re.compile(r"[\u3040-\u30ff\uff66-\uff9f]")
_KANJI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_DEVANAGARI = re.compile(r"[\u0900-\u097f]")

_DETECTOR_MAP = {
    "zh-Hant": "zh",
    "ceb": "tl",  # Cebuano, Waray, Ilocano, Hiligaynon: Philippine users read Filipino
    "war": "tl",
    "ilo": "tl",
    "hil": "tl",
    "fil": "tl",
    "ms": "id",
    "jw": "id",
    "su": "id",
    "gl": "pt",
}
_MIN_LETTERS = 8


def _letters(text: str) -> int:
    return sum(1 for ch in text if unicodedata.category(ch).startswith("L"))


def detect(text: str) -> str | None:
    """The shipped language ``text`` is written in, or None when it cannot tell.

    Japanese written in kana only (no kanji) counts as easy Japanese: a user who writes
    ざいりゅうかーど probably reads easy Japanese best.
    """
    if _KANA.search(text):
        return "ja" if _KANJI.search(text) else "ja-easy"
    if _HANGUL.search(text):
        return "ko"
    if _DEVANAGARI.search(text):
        return "ne"
    if _letters(text) < _MIN_LETTERS and not _KANJI.search(text):
        return None
    try:
        _reliable, _bytes, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:
        return None
    for _name, code, percent, _score in details:
        language = str(_DETECTOR_MAP.get(code, code))
        if language in LANGUAGES and percent >= 50:
            return language
    return None


def resolve(
    text: str,
    chosen: str | None,
    previous: str | None = None,
    hint: str | None = None,
) -> tuple[str, str | None]:
    """Decide the language to answer in.

    Returns ``(language, detected)`` where ``detected`` is what the text itself showed
    (store it as the user's last detected language), or None.
    """
    detected = detect(text) if text else None
    if chosen in LANGUAGES:
        return chosen, detected
    for candidate in (detected, previous, normalise_hint(hint)):
        if candidate in LANGUAGES:
            return candidate, detected
    return DEFAULT_LANGUAGE, detected


def normalise_hint(hint: str | None) -> str | None:
    """A platform's language hint (``pt-BR``, ``zh-hans``, ``fil``) as a shipped language."""
    if not hint:
        return None
    code = hint.replace("_", "-").split("-")[0].lower()
    code = _DETECTOR_MAP.get(code, code)
    return code if code in LANGUAGES else None
