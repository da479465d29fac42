"""Per-user rate limiting of chat (issue 7), counted where every worker sees it: the database, or
Redis (the server on 127.0.0.1:6379). Rasa is stopped; empty messages are answered without it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Message
from bot.knowledge import KnowledgeBase
from tests.conftest import Chat
from tests.test_telegram import EMERGENCY

REDIS_URL = "redis://127.0.0.1:6379/0"


def texts(replies: list[dict[str, Any]]) -> list[str]:
    return [reply["text"] for reply in replies]


def statuses(client: TestClient) -> list[str]:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(
            select(Message.status).where(Message.direction == "in").order_by(Message.id)))


@pytest.fixture(params=["database", "redis"])
def workers(request: pytest.FixtureRequest, database_url: str, make_client: Callable[..., TestClient],
            dead_engine_url: str) -> tuple[TestClient, TestClient]:
    """Two app workers on one database (and one Redis), each with its own process state."""
    extra: dict[str, Any] = {"rate_limit_per_minute": 3}
    if request.param == "redis":
        extra["redis_url"] = REDIS_URL
    return (make_client(database_url, dead_engine_url, **extra),
            make_client(database_url, dead_engine_url, **extra))


def test_over_the_limit_one_polite_notice_then_silence_and_nothing_lost(
    workers: tuple[TestClient, TestClient], kb: KnowledgeBase
) -> None:
    first, second = workers
    sender = f"flood-{uuid.uuid4().hex[:8]}"
    got = []
    for index in range(6):  # alternate between the two workers
        chat = Chat(first if index % 2 == 0 else second, sender)
        got.extend(texts(chat.say("Español" if index == 0 else "🙂")))
    assert got == [
        kb.message("language_changed", "es"), kb.message("empty_prompt", "es"), kb.message("empty_prompt", "es"),
        kb.message("rate_limited", "es"),
    ]
    assert statuses(first) == ["answered"] * 3 + ["limited"] * 3, "every message is stored"
    assert texts(Chat(second, sender).later()) == got, "nothing more arrives later"
    calm = Chat(first)  # another user is not limited
    assert texts(calm.say("🙂")) == [kb.message("empty_prompt", "en")]


def test_an_emergency_is_answered_even_over_the_limit(
    workers: tuple[TestClient, TestClient], kb: KnowledgeBase
) -> None:
    first, second = workers
    chat = Chat(first)
    for _ in range(4):
        chat.say("🙂")
    assert texts(Chat(second, chat.sender).say(EMERGENCY)) == [
        kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]


def test_redis_holds_the_counters_when_configured(
    database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str, kb: KnowledgeBase
) -> None:
    client = make_client(database_url, dead_engine_url, rate_limit_per_minute=2, redis_url=REDIS_URL)
    chat = Chat(client)
    server = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"consult:rate:rest:{chat.sender}"
        server.zadd(key, {"999999": 0.0})  # an old entry: outside the window, swept
        got = [texts(chat.say("🙂")) for _ in range(4)]
        empty = [kb.message("empty_prompt", "en")]
        assert got == [empty, empty, [kb.message("rate_limited", "en")], []]
        assert server.zcard(key) == 4
        assert 0 < server.ttl(key) <= 125
        assert statuses(client) == ["answered", "answered", "limited", "limited"]
    finally:
        server.delete(f"consult:rate:rest:{chat.sender}")
        server.close()


def test_redis_down_fails_open(
    database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str, kb: KnowledgeBase
) -> None:
    client = make_client(database_url, dead_engine_url, rate_limit_per_minute=1,
                         redis_url=f"redis://127.0.0.1:{dead_engine_url.rsplit(':', 1)[1]}/0")
    chat = Chat(client)
    for _ in range(3):
        assert texts(chat.say("🙂")) == [kb.message("empty_prompt", "en")]
