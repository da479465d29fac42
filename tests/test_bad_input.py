"""Bad input (issue 7): huge, empty, control, right-to-left, markup and broken messages are answered or
politely refused in the user's language, never 5xx, and stored as sent. Rasa is stopped, so a real
question gets the catalog's "please wait" (the engine-side answers are covered by the dialogue suite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select

from bot.db.models import Message
from bot.knowledge import KnowledgeBase
from bot.settings import Settings
from bot.web.app import build_assistant, create_app
from tests import test_line, test_telegram
from tests.conftest import Chat, wait_until
from tests.test_line import LineUser
from tests.test_telegram import TelegramUser

make_line = test_line.make_line
make_telegram = test_telegram.make_telegram


@pytest.fixture
def rest(database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str) -> TestClient:
    return make_client(database_url, dead_engine_url)


def texts(replies: list[dict[str, Any]]) -> list[str]:
    return [reply["text"] for reply in replies]


def inbound(client: TestClient) -> list[Message]:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(select(Message).where(Message.direction == "in").order_by(Message.id)))


def post(client: TestClient, body: bytes) -> Any:
    return client.post("/webhooks/rest/webhook", content=body, headers={"content-type": "application/json"})


def test_a_64_kb_message_is_stored_whole_and_answered(rest: TestClient, kb: KnowledgeBase) -> None:
    user = Chat(rest)
    big = ("I lost my residence card. " * 2600)[: 64 * 1024]
    assert texts(user.say(big)) == [kb.message("please_wait", "en")]
    assert inbound(rest)[-1].text == big


def test_a_body_over_the_limit_is_refused_with_a_reason(rest: TestClient) -> None:
    response = post(rest, json.dumps({"sender": "a", "message": "x" * 300_000}).encode())
    assert response.status_code == 413 and "too large" in response.json()["error"]
    assert inbound(rest) == []


@pytest.mark.parametrize(("language", "choice"), [("en", None), ("ko", "한국어"), ("ja-easy", "やさしい日本語")])
@pytest.mark.parametrize("message", ["🙂🎉👍", "\x01\x02\x1b\x7f", "   \t\n ", "!!!???", "\u200b\u200f\u202e"])
def test_no_words_gets_a_prompt_in_the_users_language(
    rest: TestClient, kb: KnowledgeBase, message: str, language: str, choice: str | None
) -> None:
    user = Chat(rest)
    if choice:
        assert texts(user.say(choice)) == [kb.message("language_changed", language)]
    assert texts(user.say(message)) == [kb.message("empty_prompt", language)]
    assert inbound(rest)[-1].text == message


@pytest.mark.parametrize("message", [
    "مرحبا، فقدت بطاقة الإقامة",  # Arabic
    "שלום, איבדתי את כרטיס התושב",  # Hebrew
    "<script>alert('x')</script><img src=x onerror=alert(1)>",
    "'; DROP TABLE messages; --",
    "1 OR 1=1; SELECT * FROM users",
    "Hello\x07\x1b[31m visa \x08",
    "{{7*7}} ${jndi:ldap://x} %s %n",
])
def test_strange_text_is_stored_as_sent_and_answered(rest: TestClient, kb: KnowledgeBase, message: str) -> None:
    user = Chat(rest)
    assert texts(user.say(message)) == [kb.message("please_wait", "en")]
    assert inbound(rest)[-1].text == message
    with rest.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        assert {"messages", "users", "identities"} <= set(inspect(session.get_bind()).get_table_names())


def test_nul_and_lone_surrogates_are_replaced_not_stored_broken(rest: TestClient, kb: KnowledgeBase) -> None:
    body = b'{"sender": "s\\u0000x\\ud800", "message": "visa\\u0000 help \\udfff"}'
    response = post(rest, body)
    assert response.status_code == 200
    assert texts(response.json()) == [kb.message("please_wait", "en")]
    assert inbound(rest)[-1].text == "visa help \ufffd"


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xff\xfe{not utf-8", "JSON"),
    (b'{"sender": "a", "message": "caf\xe9"}', "JSON"),
    (b"", "JSON"),
    (b"[]", "object"),
    (b'"just a string"', "object"),
    (b'{"sender": 1, "message": "hi"}', "sender"),
    (b'{"sender": "", "message": "hi"}', "sender"),
    (b'{"sender": "a", "message": ["hi"]}', "message"),
    (b'{"sender": "a", "message": null}', "message"),
    (b'{"sender": "a"}', "message"),
    (b'{"sender": "a", "message": "hi", "message_id": 5}', "message_id"),
    (b'{"sender": "' + b"a" * 200 + b'", "message": "hi"}', "sender"),
])
def test_wrong_shapes_get_400_with_a_reason(rest: TestClient, body: bytes, reason: str) -> None:
    response = post(rest, body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert inbound(rest) == []


def test_polling_with_bad_parameters_is_refused(rest: TestClient) -> None:
    assert rest.get("/webhooks/rest/messages", params={"sender": "a", "after": "x"}).status_code == 400
    assert rest.get("/webhooks/rest/messages").status_code == 400


def test_line_user_with_emoji_only_control_and_rtl(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line()
    user.say("Português")
    user.say("🙂🙂")
    user.say("\x01\x02")
    user.say("مرحبا، فقدت بطاقة الإقامة")
    assert user.texts() == [kb.message("language_changed", "pt"), kb.message("empty_prompt", "pt"),
                            kb.message("empty_prompt", "pt"), kb.message("please_wait", "pt")]
    body = b'{"destination": "U", "events": [\xff]}'
    response = user.client.post("/webhooks/line", content=body,
                                headers={"content-type": "application/json", "x-line-signature": user.fake.sign(body)})
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]


def test_telegram_user_with_emoji_only_and_broken_bodies(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram(language_code="vi")
    user.say("🙂")
    user.say("שלום, איבדתי את הכרטיס")
    assert user.texts() == [kb.message("empty_prompt", "vi"), kb.message("please_wait", "vi")]
    for body in (b"\xff\xfe", b'{"update_id": 1, "message": 5}', b'{"update_id": 2, "my_chat_member": {}}'):
        response = user.client.post("/webhooks/telegram", content=body,
                                    headers={"x-telegram-bot-api-secret-token": test_telegram.SECRET})
        assert response.status_code == 400, body


class BrokenLimiter:
    """A rate limiter whose store fails (think: a database error half-way through processing)."""

    limit = 1

    def judge(self, *args: object) -> str:
        raise RuntimeError("the counter store failed")


def test_a_crash_half_way_leaves_nothing_in_processing_and_no_500(
    database_url: str, tmp_path: Path, dead_engine_url: str, kb: KnowledgeBase
) -> None:
    settings = Settings(data_dir=tmp_path / "crash", database_url=database_url, rasa_url=dead_engine_url,
                        retry_interval=0.1)
    assistant = build_assistant(settings)
    assistant.limiter = BrokenLimiter()
    with TestClient(create_app(settings, assistant=assistant)) as client:
        response = post(client, json.dumps({"sender": "crash", "message": "🙂"}).encode())
        assert response.status_code == 202 and response.json() == []
        wait_until(lambda: [m.status for m in inbound(client)] == ["failed"], timeout=15)
        (message,) = inbound(client)
        assert message.attempts == 3 and message.text == "🙂", "kept, tried three times, then left for staff"
        assistant.limiter = None
        assert texts(Chat(client, "crash").say("🙂")) == [kb.message("empty_prompt", "en")]


def test_a_webhook_that_meets_a_database_outage_gets_503_and_is_taken_when_sent_again(
    rest: TestClient, kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a 500 with a traceback: 503 with Retry-After, nothing stored; the platform's retry is answered."""
    from sqlalchemy.exc import OperationalError

    assistant = rest.app.state.assistant  # type: ignore[attr-defined]
    store = assistant.store_inbound

    def database_away(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(assistant, "store_inbound", database_away)
    refused = rest.post("/webhooks/rest/webhook", json={"sender": "outage", "message": "hello"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.json() == {"error": "the database is unavailable; nothing was stored, please send again shortly"}
    assert inbound(rest) == []
    monkeypatch.setattr(assistant, "store_inbound", store)
    again = rest.post("/webhooks/rest/webhook", json={"sender": "outage", "message": "hello"})
    assert again.status_code == 200
    assert [m.text for m in inbound(rest)] == ["hello"]
