"""The safety net recognises emergencies in every shipped language, and only emergencies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.languages import LANGUAGES
from bot.safety import SafetyNet, normalise

DATA = yaml.safe_load((Path(__file__).parent / "data" / "emergencies.yml").read_text(encoding="utf-8"))
NET = SafetyNet.load()


def test_every_language_has_cases() -> None:
    for language in LANGUAGES:
        assert sum(case["lang"] == language for case in DATA["positive"]) >= 8, language
        assert sum(case["lang"] == language for case in DATA["negative"]) >= 8, language


@pytest.mark.parametrize("case", DATA["positive"], ids=lambda c: f"{c['lang']}-{c['kind']}-{c['text'][:30]}")
def test_emergency_is_recognised_with_its_kind(case: dict[str, Any]) -> None:
    hit = NET.check(case["text"])
    assert hit is not None, case["text"]
    assert hit.kind == case["kind"]


@pytest.mark.parametrize("case", DATA["negative"], ids=lambda c: f"{c['lang']}-{c['text'][:30]}")
def test_ordinary_message_is_not_an_emergency(case: dict[str, Any]) -> None:
    assert NET.check(case["text"]) is None, case["text"]


def test_normalise_folds_width_case_and_latin_accents_only() -> None:
    assert normalise("ＫＨÔＮＧ  thở") == "khong tho"
    assert normalise("Đang cháy") == "dang chay"
    assert normalise("いきをしていない") == "いきをしていない"
    assert normalise("सास फेर्दैन") == "सास फेर्दैन"
