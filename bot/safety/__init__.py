"""The safety net: life-threatening messages are recognised before, and independently of, Rasa.

Patterns live in ``patterns.yml`` (one list of regular expressions per kind and language).
Every pattern of every language is tried on every message, because a language detector can be
wrong on a short, panicked message and a missed emergency costs more than an extra 119 hint.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

KINDS = ("medical", "fire", "trapped", "tsunami", "evacuation")
_PATTERNS_FILE = Path(__file__).with_name("patterns.yml")


def normalise(text: str) -> str:
    """Fold a message to the form the patterns are written against.

    NFKC (full-width to half-width), case-folded, Latin letters without diacritics
    (Vietnamese "không thở" becomes "khong tho", "đ" becomes "d"), runs of whitespace
    collapsed to one space. Non-Latin scripts (kana, kanji, hangul, Devanagari) are kept.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("đ", "d")
    decomposed = unicodedata.normalize("NFD", text)
    kept: list[str] = []
    for ch in decomposed:
        if unicodedata.category(ch) == "Mn":
            base = kept[-1] if kept else ""
            if base and "LATIN" in unicodedata.name(base, ""):
                continue
        kept.append(ch)
    text = unicodedata.normalize("NFC", "".join(kept))
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Emergency:
    """A recognised emergency: its kind and the language whose pattern matched."""

    kind: str
    language: str


class SafetyNet:
    """Compiled emergency patterns."""

    def __init__(self, patterns: dict[str, dict[str, list[str]]]) -> None:
        self._compiled: list[tuple[str, str, re.Pattern[str]]] = []
        for kind, by_language in patterns.items():
            if kind not in KINDS:
                raise ValueError(f"unknown emergency kind {kind!r}")
            for language, expressions in by_language.items():
                for expression in expressions:
                    self._compiled.append((kind, language, re.compile(expression)))

    @classmethod
    def load(cls, path: Path = _PATTERNS_FILE) -> SafetyNet:
        with path.open(encoding="utf-8") as handle:
            return cls(yaml.safe_load(handle))

    def check(self, text: str) -> Emergency | None:
        """Return the first emergency the text describes, in the order of ``KINDS``."""
        folded = normalise(text)
        hits = [(kind, language) for kind, language, rx in self._compiled if rx.search(folded)]
        if not hits:
            return None
        kind, language = min(hits, key=lambda hit: KINDS.index(hit[0]))
        return Emergency(kind=kind, language=language)
