"""Alert templates (``knowledge_base/alerts.yml``): loading and the kb-check of every language."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class AlertTemplate:
    """One reviewed alert text in every language, with the fields staff fill in."""

    name: str
    fields: tuple[str, ...]
    checkin: bool
    texts: dict[str, str]
    title: dict[str, str] = field(default_factory=dict)


def load_alerts(root: Path) -> dict[str, AlertTemplate]:
    """``alerts.yml`` of the knowledge base: ``templates`` and the staff-note texts."""
    with (root / "alerts.yml").open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    templates: dict[str, AlertTemplate] = {}
    for name, spec in (data.get("templates") or {}).items():
        templates[str(name)] = AlertTemplate(
            name=str(name),
            fields=tuple(str(f) for f in spec.get("fields") or ()),
            checkin=bool(spec.get("checkin", False)),
            texts={str(k): str(v) for k, v in (spec.get("texts") or {}).items()},
            title={str(k): str(v) for k, v in (spec.get("title") or {}).items()},
        )
    return templates


def check_alerts(templates: Mapping[str, AlertTemplate], kb: KnowledgeBase) -> list[str]:
    """Every template has every language, the same placeholders in each, and only known ones."""
    problems: list[str] = []
    region = set(kb.region.values) | set(kb.region.names)
    for name, template in templates.items():
        if not template.texts:
            problems.append(f"alerts.yml: {name} has no texts")
            continue
        reference = set(_PLACEHOLDER.findall(template.texts.get("ja", "")))
        for lang in LANGUAGES:
            text = template.texts.get(lang, "")
            if not text.strip():
                problems.append(f"alerts.yml: {name} has no text in {lang}")
                continue
            if not template.title.get(lang, "").strip():
                problems.append(f"alerts.yml: {name} has no title in {lang}")
            found = set(_PLACEHOLDER.findall(text))
            if found != reference:
                problems.append(
                    f"alerts.yml: {name} in {lang} has placeholders {sorted(found)}, ja has {sorted(reference)}"
                )
        for lang in template.texts:
            if lang not in LANGUAGES:
                problems.append(f"alerts.yml: {name} has an unknown language {lang!r}")
        for placeholder in reference:
            if placeholder not in template.fields and placeholder not in region:
                problems.append(f"alerts.yml: {name} uses {{{placeholder}}}, neither a field nor a region value")
        for fieldname in template.fields:
            if fieldname not in reference:
                problems.append(f"alerts.yml: {name} declares field {fieldname!r} but no text uses it")
    for key in ("checkin_button_safe", "checkin_button_help", "alert_note_translated", "alert_note_japanese"):
        for lang in LANGUAGES:
            if not str(kb.messages.get(key, {}).get(lang, "")).strip():
                problems.append(f"messages.yml: {key} has no text in {lang} (used by alerts)")
    return problems


