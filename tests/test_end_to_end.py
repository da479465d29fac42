"""End to end through the really trained Rasa model: what a user of the web chat sees."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Escalation, Message
from bot.knowledge import KnowledgeBase
from tests.conftest import Chat, EngineProcess, wait_until

pytestmark = pytest.mark.engine


def answer_text(kb: KnowledgeBase, entry_id: str, language: str) -> str:
    """The reviewed answer as the user reads it (body, then the last-checked line)."""
    entry = kb.entries[entry_id]
    checked = kb.message("source_label", language, date=entry.last_checked.isoformat())
    return f"{kb.answer(entry_id, language)}\n\n{checked}"


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, running_engine: EngineProcess) -> TestClient:
    return make_client(database_url, running_engine.url)


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("在留カードをなくしました", "ja"),
        ("I lost my residence card", "en"),
        ("Nawala ko ang residence card ko", "tl"),
    ],
)
def test_lost_residence_card_is_answered_in_the_users_language(
    client: TestClient, kb: KnowledgeBase, question: str, language: str
) -> None:
    replies = Chat(client).say(question)
    assert [r["text"] for r in replies] == [answer_text(kb, "lost_residence_card", language)]
    assert "在留カード" in replies[0]["text"], "the official Japanese term stays in every language"
    related = [b["title"] for b in replies[0].get("buttons", [])]
    assert related == [
        *[kb.title(r, language) for r in kb.entries["lost_residence_card"].related][:3],
        kb.message("button_helpful", language), kb.message("button_not_helpful", language),
    ]


def test_related_button_opens_that_answer(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    first = chat.say("I lost my residence card")
    button = first[0]["buttons"][0]
    target = kb.entries["lost_residence_card"].related[0]
    replies = chat.say(button["payload"])
    assert [r["text"] for r in replies] == [answer_text(kb, target, "en")]


def test_greeting_and_thanks_come_from_the_catalog(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    assert [r["text"] for r in chat.say("hello")] == [kb.message("greet_reply", "en")]
    assert [r["text"] for r in chat.say("thank you so much")] == [kb.message("thanks_reply", "en")]


def test_asking_for_a_person_opens_an_escalation_with_the_transcript(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    chat.say("I lost my residence card")
    replies = chat.say("I want to talk to a real person")
    assert len(replies) == 1
    assert kb.message("handoff_created", "en", when="").split("\n")[0] in replies[0]["text"]
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        (escalation,) = session.scalars(select(Escalation)).all()
    assert escalation.reason == "requested" and not escalation.urgent and escalation.language == "en"
    texts = [line["text"] for line in escalation.transcript]
    assert texts[0] == "I lost my residence card"
    assert texts[-1] == "I want to talk to a real person"


def test_change_language_shows_the_menu_and_a_choice_sticks(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    (menu,) = chat.say("I want to change the language")
    assert menu["text"] == kb.message("language_menu", "en")
    titles = [b["title"] for b in menu["buttons"]]
    assert titles == [kb.language_label(code) for code in kb.languages]
    vietnamese = next(b for b in menu["buttons"] if b["title"] == kb.language_label("vi"))
    assert [r["text"] for r in chat.say(vietnamese["payload"])] == [kb.message("language_changed", "vi")]
    replies = chat.say("I lost my residence card")
    assert [r["text"] for r in replies] == [answer_text(kb, "lost_residence_card", "vi")]


def test_two_failed_understandings_suggest_answers_then_offer_staff(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    (first,) = chat.say("qwerty zxcv asdf")
    assert first["text"] == kb.message("suggest_intro", "en")
    buttons = first["buttons"]
    assert 2 <= len(buttons) <= 4
    assert buttons[-1] == {"title": kb.message("suggest_none", "en"), "payload": "/deny"}
    (second,) = chat.say(buttons[-1]["payload"])
    assert second["text"] == kb.message("offer_staff", "en")
    (handoff,) = chat.say(second["buttons"][0]["payload"])
    assert "\n".join(kb.message("handoff_created", "en", when="").split("\n")[:1]) in handoff["text"]


def test_a_suggested_answer_can_be_chosen(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    (first,) = chat.say("qwerty zxcv asdf")
    choice = first["buttons"][0]
    entry_id = choice["payload"].split('"answer":"')[1].rstrip('"}')
    assert choice["title"] == kb.title(entry_id, "en")
    assert [r["text"] for r in chat.say(choice["payload"])] == [answer_text(kb, entry_id, "en")]


def test_question_waits_while_rasa_is_stopped_and_is_answered_when_it_is_back(
    client: TestClient, running_engine: EngineProcess, kb: KnowledgeBase
) -> None:
    chat = Chat(client)
    running_engine.stop()
    try:
        replies = chat.say("I lost my residence card")
        assert [r["text"] for r in replies] == [kb.message("please_wait", "en")]
        emergency = chat.say("My friend collapsed and is not breathing")
        assert emergency[0]["text"] == kb.message("emergency_medical", "en")
    finally:
        running_engine.start()
    late = wait_until(chat.later, timeout=30)
    assert [r["text"] for r in late] == [answer_text(kb, "lost_residence_card", "en")]
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        statuses = session.scalars(select(Message.status).where(Message.direction == "in")).all()
    assert statuses == ["answered", "answered"]
