"""The REST channel and the pipeline with Rasa stopped: storage, safety net, languages, bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Escalation, Message
from bot.knowledge import KnowledgeBase
from tests.conftest import Chat

EMERGENCY = {
    "ja": "友達が倒れて息をしていません",
    "ja-easy": "ともだちが たおれました。いきを していません",
    "en": "My friend collapsed and is not breathing",
    "zh": "我的朋友晕倒了，没有呼吸",
    "vi": "Bạn tôi bị ngã quỵ và không thở",
    "ko": "친구가 쓰러졌는데 숨을 안 쉬어요",
    "pt": "Meu amigo desmaiou e não está respirando",
    "ne": "मेरो साथी ढल्यो र सास फेरेको छैन",
    "tl": "Nahimatay ang kaibigan ko at hindi humihinga",
    "id": "Teman saya pingsan dan tidak bernapas",
    "es": "Mi amigo se desmayó y no respira",
}


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str) -> TestClient:
    return make_client(database_url, dead_engine_url)


def rows(client: TestClient, model: type, *where: object) -> list:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(select(model).where(*where)))


@pytest.mark.parametrize("language", sorted(EMERGENCY))
def test_emergency_gets_119_first_even_with_rasa_stopped(
    make_client: Callable[..., TestClient], tmp_path: object, dead_engine_url: str, kb: KnowledgeBase, language: str
) -> None:
    client = make_client(f"sqlite:///{tmp_path}/e.db", dead_engine_url)
    chat = Chat(client)
    chat.say(kb.language_label(language))  # the user chose this language from the menu
    replies = chat.say(EMERGENCY[language])
    expected = kb.message("emergency_medical", language)
    assert replies[0]["text"] == expected
    assert "119" in replies[0]["text"]
    escalations = rows(client, Escalation)
    assert [(e.reason, e.urgent) for e in escalations] == [("safety", True)]


def test_emergency_answer_follows_the_detected_language(client: TestClient, kb: KnowledgeBase) -> None:
    replies = Chat(client).say("Mi amigo se desmayó y no respira")
    assert replies[0]["text"] == kb.message("emergency_medical", "es")


def test_question_waits_for_the_engine_and_user_is_told(client: TestClient, kb: KnowledgeBase) -> None:
    chat = Chat(client)
    replies = chat.say("I lost my residence card")
    assert [r["text"] for r in replies] == [kb.message("please_wait", "en")]
    second = chat.say("and my passport too")
    assert second == [], "the user is told once, not after every message"
    stored = rows(client, Message, Message.direction == "in")
    assert [(m.text, m.status) for m in stored] == [
        ("I lost my residence card", "waiting_engine"),
        ("and my passport too", "waiting_engine"),
    ]


@pytest.mark.parametrize("text", ["", "   ", "?!...", "🙏🙏", "\u200b"])
def test_empty_messages_get_a_prompt_not_the_classifier(client: TestClient, kb: KnowledgeBase, text: str) -> None:
    chat = Chat(client)
    chat.say("日本語")
    replies = chat.say(text)
    assert [r["text"] for r in replies] == [kb.message("empty_prompt", "ja")]
    assert rows(client, Message, Message.status == "waiting_engine") == []


@pytest.mark.parametrize(
    ("name", "language"),
    [("English", "en"), ("tiếng việt", "vi"), ("日本語", "ja"), ("Español", "es"), ("नेपाली", "ne"), ("Tagalog", "tl")],
)
def test_writing_a_language_name_switches_and_is_saved(
    client: TestClient, kb: KnowledgeBase, name: str, language: str
) -> None:
    chat = Chat(client)
    assert [r["text"] for r in chat.say(name)] == [kb.message("language_changed", language)]
    assert [r["text"] for r in chat.say("🙂")] == [kb.message("empty_prompt", language)]


def test_redelivered_message_is_answered_once(client: TestClient) -> None:
    chat = Chat(client)
    first = chat.say("Mi amigo se desmayó y no respira", message_id="evt-1")
    again = chat.say("Mi amigo se desmayó y no respira", message_id="evt-1")
    assert [r["text"] for r in again] == [r["text"] for r in first]
    assert len(rows(client, Message, Message.direction == "in")) == 1
    assert len(rows(client, Escalation)) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "JSON"),
        (b"[]", "object"),
        (b'{"message": "hi"}', "sender"),
        (b'{"sender": "", "message": "hi"}', "sender"),
        (b'{"sender": "a", "message": 5}', "message"),
        (b'{"sender": "a", "message": "hi", "message_id": 7}', "message_id"),
    ],
)
def test_bad_requests_get_400_with_a_reason(client: TestClient, body: bytes, reason: str) -> None:
    response = client.post("/webhooks/rest/webhook", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert rows(client, Message) == []


def test_very_long_message_is_stored_whole(client: TestClient) -> None:
    text = "residence card " * 2000
    Chat(client).say(text)
    (stored,) = rows(client, Message, Message.direction == "in")
    assert stored.text == text


def test_web_chat_page_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "/webhooks/rest/webhook" in page.text and "<form" in page.text


def test_health_reports_the_engine_down(client: TestClient) -> None:
    assert client.get("/health").json() == {"app": "ok", "engine": "unavailable"}


def test_schema_is_created_by_migrations(client: TestClient) -> None:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        tables = set(sqlalchemy.inspect(session.get_bind()).get_table_names())
    assert {"users", "identities", "conversations", "messages", "escalations", "alembic_version"} <= tables
