"""The region's municipalities as users write them: the whole-message lookup and its content check.

A user gives their area (``User.area``: alert targeting, check-in counts) by writing one
municipality's name alone, in any form people use: 盛岡市, 盛岡, もりおか, モリオカ, Morioka,
morioka-shi, Morioka City, 岩手県盛岡市. Case, width, spaces, hyphens and macrons do not matter
(Ōshū, Oushuu and Oshu are one name). The list is ``municipalities:`` in ``region.yml``.

A name without its 市/町/村 that is also the prefecture's name (岩手町 → 岩手, Iwate) is not
accepted alone: "Iwate" means the prefecture more often than the town. A form shared by two
municipalities matches neither (``kb-check`` reports it).
"""

from __future__ import annotations

import re
from collections import defaultdict

from bot.knowledge import KnowledgeBase, Municipality, Region
from bot.safety import normalise

MAX_NAME_CHARS = 64
"""``User.area`` is ``String(64)``."""
READINGS = {"市": ("し",), "区": ("く",), "町": ("まち", "ちょう"), "村": ("むら", "そん")}
"""The suffixes a municipality's name ends with, and how each is read."""
ROMAJI = {"し": ("shi",), "く": ("ku",), "まち": ("machi",), "ちょう": ("cho",), "むら": ("mura",), "そん": ("son",)}
ENGLISH = {"市": ("city",), "区": ("ward", "city"), "町": ("town",), "村": ("village",)}
PREFECTURE_SUFFIXES = ("県", "府", "都")
MAX_MESSAGE_CHARS = 40
"""Longer messages are never taken for a place name (nor for a failed try at one)."""

_DROP = re.compile(r"[\s\-‐‑–—_.,・·'’\"()（）「」『』!?！？。、:：;/]+")
_HIRAGANA = re.compile(r"^[ぁ-ゖー]+$")
_ROMAJI = re.compile(r"^[A-Za-z][A-Za-z' -]*$")
_LONG_VOWEL = re.compile(r"o[ouh](?![aeiou])")


def fold(text: str) -> str:
    """The form names are compared in: width, case, kana script, punctuation and long vowels folded."""
    text = normalise(text)
    text = "".join(chr(ord(ch) - 0x60) if "ァ" <= ch <= "ヶ" else ch for ch in text)  # katakana → hiragana
    text = text.replace("ゖ", "け").replace("ゕ", "か")  # 金ヶ崎 = 金ケ崎
    text = _DROP.sub("", text)
    if text.isascii():
        text = _LONG_VOWEL.sub("o", text).replace("uu", "u")  # Oushuu, Ohshu, Ooshu = Oshu
    return text


def _reading_suffix(municipality: Municipality) -> str | None:
    suffix = municipality.name[-1:]
    for reading in READINGS.get(suffix, ()):
        if municipality.reading.endswith(reading) and len(municipality.reading) > len(reading):
            return reading
    return None


def _prefecture(region: Region) -> tuple[str, str]:
    """The prefecture's Japanese name and its stem, folded (岩手県, 岩手)."""
    name = fold(region.names.get("region", {}).get("ja", ""))
    stem = name[:-1] if name.endswith(PREFECTURE_SUFFIXES) else name
    return name, stem


def forms(municipality: Municipality, prefecture_stem: str = "") -> set[str]:
    """Every folded way of writing one municipality that is accepted as its name."""
    suffix = municipality.name[-1:] if municipality.name[-1:] in READINGS else ""
    stem = municipality.name[: -len(suffix)] if suffix else municipality.name
    reading_suffix = _reading_suffix(municipality)
    reading_stem = municipality.reading[: -len(reading_suffix)] if reading_suffix else municipality.reading
    romaji = fold(municipality.romaji)
    names = {municipality.name, municipality.reading}
    for ending in ROMAJI.get(reading_suffix or "", ()):
        names.add(romaji + ending)
    for word in ENGLISH.get(suffix, ()):
        names.update({f"{romaji} {word}", f"{word} of {romaji}"})
    if fold(stem) != prefecture_stem:
        names.update({stem, reading_stem, romaji})
    return {fold(name) for name in names if name}


class AreaDirectory:
    """Finds the municipality a whole message names, and says a municipality in the user's language."""

    def __init__(self, region: Region) -> None:
        self.municipalities = region.municipalities
        self._prefecture, prefecture_stem = _prefecture(region)
        owners: dict[str, set[str]] = defaultdict(set)
        for municipality in self.municipalities:
            for form in forms(municipality, prefecture_stem):
                owners[form].add(municipality.name)
        by_name = {m.name: m for m in self.municipalities}
        self._by_form = {form: by_name[next(iter(names))] for form, names in owners.items() if len(names) == 1}
        self.ambiguous = {form: sorted(names) for form, names in owners.items() if len(names) > 1}
        self._by_name = by_name

    def find(self, text: str) -> Municipality | None:
        """The municipality the whole message names (盛岡市, もりおか, Morioka City...), or None."""
        if not text or len(text) > MAX_MESSAGE_CHARS:
            return None
        key = fold(text)
        if self._prefecture and key.startswith(self._prefecture) and len(key) > len(self._prefecture):
            key = key[len(self._prefecture):]  # 岩手県盛岡市
        return self._by_form.get(key)

    def get(self, name: str | None) -> Municipality | None:
        return self._by_name.get(name or "")

    def display(self, municipality: Municipality, language: str) -> str:
        """盛岡市 (ja, zh), 盛岡市(もりおかし) (easy Japanese), Morioka (盛岡市) (the rest)."""
        if language in ("ja", "zh"):
            return municipality.name
        if language == "ja-easy":
            return f"{municipality.name}({municipality.reading})"
        return f"{municipality.romaji} ({municipality.name})"

    def example(self, language: str) -> str:
        """The first municipality as an example of what to write, in the user's script."""
        if not self.municipalities:
            return ""
        first = self.municipalities[0]
        if language in ("ja", "zh"):
            return first.name
        if language == "ja-easy":
            return first.reading
        return first.romaji


def check_areas(kb: KnowledgeBase) -> list[str]:
    """Content checks of ``municipalities:`` in ``region.yml`` (run by ``kb-check``)."""
    region = kb.region
    where = "region.yml: municipalities"
    if not region.municipalities:
        return [f"{where}: none listed, so users cannot give their area"]
    problems: list[str] = []
    seen: set[str] = set()
    for municipality in region.municipalities:
        name = municipality.name
        if name in seen:
            problems.append(f"{where}: {name} is listed twice")
        seen.add(name)
        if len(name) > MAX_NAME_CHARS:
            problems.append(f"{where}: {name} is longer than {MAX_NAME_CHARS} characters")
        if name[-1:] not in READINGS:
            problems.append(f"{where}: {name} does not end with one of {''.join(READINGS)}")
        if not _HIRAGANA.match(municipality.reading):
            problems.append(f"{where}: the reading of {name} must be hiragana, not {municipality.reading!r}")
        elif name[-1:] in READINGS and _reading_suffix(municipality) is None:
            readings = " or ".join(READINGS[name[-1]])
            problems.append(f"{where}: the reading of {name} must end with {readings}")
        if not _ROMAJI.match(municipality.romaji):
            problems.append(f"{where}: the romaji of {name} must be Latin letters without macrons, "
                            f"not {municipality.romaji!r}")
    directory = AreaDirectory(region)
    for form, names in sorted(directory.ambiguous.items()):
        problems.append(f"{where}: {form!r} names {' and '.join(names)}; it matches neither")
    language_names = {fold(str(name)) for info in kb.languages.values()
                      for name in [info.get("label", ""), *list(info.get("names") or [])] if name}
    for municipality in region.municipalities:
        clash = sorted(forms(municipality, _prefecture(region)[1]) & language_names)
        if clash:
            problems.append(f"{where}: {municipality.name} is written like a language's name: {', '.join(clash)}")
    return problems
