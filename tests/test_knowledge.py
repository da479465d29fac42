"""The knowledge base as users read it: complete, every placeholder filled, terms kept."""

from __future__ import annotations

import re
import unicodedata

import pytest
import yaml

from bot.knowledge import KnowledgeBase, check
from bot.languages import LANGUAGES
from bot.settings import PROJECT


def test_knowledge_base_passes_every_check(kb: KnowledgeBase) -> None:
    assert check(kb) == []


def test_starter_knowledge_base_covers_the_five_topics(kb: KnowledgeBase) -> None:
    assert len(kb.entries) >= 15
    topics = {entry.topic for entry in kb.entries.values()}
    assert {"status_of_residence", "job_hunting", "daily_life", "medical", "disaster"} <= topics


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_answer_renders_without_leftover_placeholders(kb: KnowledgeBase, language: str) -> None:
    for entry_id in kb.entries:
        text = kb.answer(entry_id, language)
        assert not re.search(r"\{[a-z_]+\}", text), (entry_id, language)
        assert len(text) > 40


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_catalog_message_renders(kb: KnowledgeBase, language: str) -> None:
    for key in kb.messages:
        text = kb.message(key, language, when="x", next_open="x", date="2026-01-01", area="x", example="x")
        assert not re.search(r"\{[a-z_]+\}", text), (key, language)


def test_office_phone_comes_from_the_region_profile(kb: KnowledgeBase) -> None:
    answer = kb.answer("consultation_center", "en")
    assert "019-654-8900" in answer


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_answer_keeps_an_official_japanese_term(kb: KnowledgeBase, language: str) -> None:
    for entry in kb.entries.values():
        text = re.sub(r"[(（][\u3040-\u309fー・\s]+[)）]", "", kb.answer(entry.id, language))  # readings
        if language == "ja-easy":  # easy Japanese puts a space between phrases: 木(き)の 枝(えだ)
            text = re.sub(r"\s+", "", text)
        assert any(term in text for term in entry.terms_ja), (entry.id, language, entry.terms_ja)


def test_every_entry_keeps_sources_and_a_check_date(kb: KnowledgeBase) -> None:
    for entry in kb.entries.values():
        assert entry.sources and all(s.url.startswith("http") for s in entry.sources), entry.id
        assert entry.last_checked.year >= 2026


def _folded(text: str) -> str:
    """A question as the classifier would see it, minus case, width, spaces and punctuation."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).lower() if c.isalnum())


def test_no_held_out_question_is_also_a_training_question(kb: KnowledgeBase) -> None:
    """bench/heldout measures questions the engine never saw: none may be a training question of its language.

    (Short words such as "nah" or "bye bye" may appear in two languages' data.)
    """
    from bench.accuracy import load_heldout

    training = {(lang, _folded(q)) for entry in kb.entries.values() for lang, qs in entry.questions.items() for q in qs}
    for path in (PROJECT / "nlu_data" / "core").glob("*.yml"):
        for block in yaml.safe_load(path.read_text(encoding="utf-8"))["nlu"]:
            lines = block["examples"].splitlines()
            training |= {(path.stem, _folded(line[2:])) for line in lines if line.startswith("- ")}
    held_out = [(lang, q) for lang, _, _, q in load_heldout(kb)]
    assert len(held_out) > 4000
    assert [(lang, q) for lang, q in held_out if (lang, _folded(q)) in training] == []
