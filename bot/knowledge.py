"""The consultation knowledge base, the region profile and the message catalog.

Everything a user reads comes from here, in the user's language. Loaded once at start-up;
``KnowledgeBase.load`` raises :class:`KnowledgeBaseError` with every problem it finds.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.languages import LANGUAGES, chain

TOPICS = ("status_of_residence", "job_hunting", "daily_life", "medical", "disaster", "services")
CATEGORIES = (
    "immigration",
    "labour",
    "tax",
    "social_insurance",
    "medical",
    "education",
    "housing",
    "disaster",
    "daily_life",
)
_ID = re.compile(r"^[a-z0-9_]+$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class KnowledgeBaseError(Exception):
    """The knowledge base on disk is not valid; ``problems`` lists what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Source:
    title: str
    url: str


@dataclass(frozen=True)
class Entry:
    """One reviewed answer with its sources and training questions."""

    id: str
    topic: str
    category: str
    terms_ja: tuple[str, ...]
    urgent: bool
    related: tuple[str, ...]
    last_checked: dt.date
    sources: tuple[Source, ...]
    answers: dict[str, str]
    questions: dict[str, tuple[str, ...]]
    titles: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class Municipality:
    """A city, town or village of the region: what a user gives as their area."""

    name: str
    """The Japanese name with 市/町/村 (盛岡市): the value stored in ``User.area``."""
    reading: str
    """The name in hiragana (もりおかし)."""
    romaji: str
    """The romanised name without the suffix (Morioka)."""


@dataclass(frozen=True)
class Region:
    """The regional facts that answers refer to by placeholder."""

    region_id: str
    timezone: str
    names: dict[str, dict[str, str]]
    values: dict[str, str]
    unconfirmed: tuple[str, ...]
    helpdesk: dict[str, Any]
    municipalities: tuple[Municipality, ...] = ()

    def placeholders(self, language: str) -> dict[str, str]:
        filled = {key: str(value) for key, value in self.values.items()}
        for key, texts in self.names.items():
            filled[key] = next((texts[lang] for lang in chain(language) if lang in texts), "")
        return filled


class _Keep(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders; unknown ones stay as they are."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass
class KnowledgeBase:
    entries: dict[str, Entry]
    region: Region
    messages: dict[str, dict[str, str]]
    languages: dict[str, dict[str, Any]]
    root: Path

    @classmethod
    def load(cls, root: Path) -> KnowledgeBase:
        problems: list[str] = []
        region = _load_region(root / "region.yml")
        messages = _read_yaml(root / "messages.yml") or {}
        languages = _read_yaml(root / "languages.yml") or {}
        entries: dict[str, Entry] = {}
        for path in sorted((root / "entries").glob("*/*.yml")):
            try:
                entry = _parse_entry(path, _read_yaml(path))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if entry.id in entries:
                problems.append(f"{path}: duplicate id {entry.id}")
            entries[entry.id] = entry
        if problems:
            raise KnowledgeBaseError(problems)
        return cls(entries=entries, region=region, messages=messages, languages=languages, root=root)

    def message(self, key: str, language: str, **extra: str) -> str:
        """A catalog message in ``language`` with placeholders filled."""
        texts = self.messages.get(key, {})
        template = next((texts[lang] for lang in chain(language) if lang in texts), key)
        values = self.region.placeholders(language)
        values.update(extra)
        return fill(template, values).strip()

    def answer(self, entry_id: str, language: str) -> str:
        entry = self.entries[entry_id]
        template = next(entry.answers[lang] for lang in chain(language) if lang in entry.answers)
        return fill(template, self.region.placeholders(language)).strip()

    def title(self, entry_id: str, language: str) -> str:
        """A short button title for an entry, in ``language``."""
        entry = self.entries[entry_id]
        for lang in chain(language):
            if lang in entry.titles:
                return entry.titles[lang]
        questions = next((entry.questions[lang] for lang in chain(language) if entry.questions.get(lang)), ())
        return questions[0] if questions else entry_id

    def language_label(self, language: str) -> str:
        return str(self.languages.get(language, {}).get("label", language))


def _read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _load_region(path: Path) -> Region:
    data = _read_yaml(path)
    return Region(
        region_id=str(data["region_id"]),
        timezone=str(data["timezone"]),
        names={key: dict(value) for key, value in data.get("names", {}).items()},
        values={key: str(value) for key, value in data.get("values", {}).items()},
        unconfirmed=tuple(data.get("unconfirmed", ())),
        helpdesk=dict(data.get("helpdesk", {})),
        municipalities=_municipalities(data.get("municipalities") or ()),
    )


def _municipalities(items: Any) -> tuple[Municipality, ...]:
    found: list[Municipality] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        fields = [item.get(key) if isinstance(item, dict) else None for key in ("name", "reading", "romaji")]
        if not all(isinstance(value, str) and value.strip() for value in fields):
            problems.append(f"region.yml: municipality {index + 1} needs a name, a reading and a romaji")
            continue
        name, reading, romaji = (str(value).strip() for value in fields)
        found.append(Municipality(name=name, reading=reading, romaji=romaji))
    if problems:
        raise KnowledgeBaseError(problems)
    return tuple(found)


def _parse_entry(path: Path, data: dict[str, Any]) -> Entry:
    if not isinstance(data, dict):
        raise ValueError("an entry is a mapping")
    entry_id = str(data["id"])
    if not _ID.match(entry_id):
        raise ValueError(f"id {entry_id!r} must be lowercase a-z, 0-9 and _")
    if path.stem != entry_id:
        raise ValueError(f"file name must be {entry_id}.yml")
    if data["topic"] not in TOPICS:
        raise ValueError(f"topic {data['topic']!r} is not one of {TOPICS}")
    if data["category"] not in CATEGORIES:
        raise ValueError(f"category {data['category']!r} is not one of {CATEGORIES}")
    checked = data["last_checked"]
    if not isinstance(checked, dt.date):
        checked = dt.date.fromisoformat(str(checked))
    sources = tuple(Source(title=str(s["title"]), url=str(s["url"])) for s in data["sources"])
    if not sources:
        raise ValueError("at least one source is required")
    return Entry(
        id=entry_id,
        topic=str(data["topic"]),
        category=str(data["category"]),
        terms_ja=tuple(str(t) for t in data.get("terms_ja") or ()),
        urgent=bool(data.get("urgent", False)),
        related=tuple(str(r) for r in data.get("related") or ()),
        last_checked=checked,
        sources=sources,
        answers={str(k): str(v) for k, v in (data.get("answers") or {}).items()},
        questions={str(k): tuple(str(q) for q in v or ()) for k, v in (data.get("questions") or {}).items()},
        titles={str(k): str(v) for k, v in (data.get("titles") or {}).items()},
        path=path,
    )


def check(kb: KnowledgeBase, min_questions: int = 8) -> list[str]:
    """Content checks run by ``make kb-check``: every problem found, as text."""
    problems: list[str] = []
    digits = re.compile(r"\d+(?:[.,]\d+)*")
    seen_questions: dict[str, str] = {}
    for entry in kb.entries.values():
        where = f"{entry.path}"
        for lang in LANGUAGES:
            if not entry.answers.get(lang, "").strip():
                problems.append(f"{where}: no answer in {lang}")
            if len(entry.questions.get(lang, ())) < min_questions:
                problems.append(f"{where}: fewer than {min_questions} training questions in {lang}")
            if entry.titles and not entry.titles.get(lang):
                problems.append(f"{where}: no title in {lang}")
        for related in entry.related:
            if related not in kb.entries:
                problems.append(f"{where}: related entry {related!r} does not exist")
        ja = entry.answers.get("ja", "")
        ja_numbers = set(digits.findall(ja))
        ja_placeholders = set(_PLACEHOLDER.findall(ja))
        for lang, text in entry.answers.items():
            if lang not in LANGUAGES:
                problems.append(f"{where}: unknown language {lang!r}")
                continue
            missing = sorted(n for n in ja_numbers if n not in text)
            if missing:
                problems.append(f"{where}: {lang} answer lacks {', '.join(missing)} from the ja answer")
            if set(_PLACEHOLDER.findall(text)) != ja_placeholders:
                problems.append(f"{where}: {lang} answer has other placeholders than ja")
            for name in _PLACEHOLDER.findall(text):
                if name not in kb.region.values and name not in kb.region.names:
                    problems.append(f"{where}: {lang} answer uses unknown placeholder {{{name}}}")
        for questions in entry.questions.values():
            for question in questions:
                key = " ".join(question.casefold().split())
                other = seen_questions.get(key)
                if other is not None and other != entry.id:
                    problems.append(f"{where}: question {question!r} also trains {other}")
                seen_questions[key] = entry.id
    for key, texts in kb.messages.items():
        for lang in LANGUAGES:
            if not str(texts.get(lang, "")).strip():
                problems.append(f"messages.yml: {key} has no text in {lang}")
        en = set(_PLACEHOLDER.findall(str(texts.get("en", ""))))
        for lang, text in texts.items():
            if set(_PLACEHOLDER.findall(str(text))) != en:
                problems.append(f"messages.yml: {key} in {lang} has other placeholders than en")
    for lang in LANGUAGES:
        if lang not in kb.languages:
            problems.append(f"languages.yml: {lang} is missing")
    return problems
