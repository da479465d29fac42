"""Privacy (issue 7): "delete my data" on every channel, the office's export / delete / purge
commands, and the retention period applied by the background loop. Rasa is stopped."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bot.__main__ import main
from bot.db.models import Conversation, Escalation, Identity, Message, User, utcnow
from bot.knowledge import KnowledgeBase
from bot.privacy import purge
from tests import test_line, test_telegram
from tests.conftest import Chat, wait_until
from tests.fakes import line_event
from tests.test_line import LineUser
from tests.test_telegram import EMERGENCY

make_line = test_line.make_line
make_telegram = test_telegram.make_telegram


def rows(client: TestClient, model: type, *where: object) -> list[Any]:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))  # type: ignore[attr-defined]


@pytest.fixture
def rest(database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str) -> TestClient:
    return make_client(database_url, dead_engine_url)


@pytest.mark.parametrize("command", ["/delete_my_data", "Apagar os meus dados", "  delete MY data! "])
def test_rest_user_deletes_their_data_with_a_text_command(
    rest: TestClient, kb: KnowledgeBase, command: str
) -> None:
    user, other = Chat(rest), Chat(rest)
    user.say("Português")
    user.say(EMERGENCY)
    user.say("Morioka")
    other.say(EMERGENCY)
    assert len(rows(rest, Escalation)) == 2
    assert [r["text"] for r in user.say(command)] == [kb.message("data_deleted", "pt")]
    mine, theirs = (
        rows(rest, Message, Message.conversation_id.in_(
            select(Conversation.id).join(Identity).where(Identity.platform_user_id == chat.sender)))
        for chat in (user, other)
    )
    assert [(m.direction, m.text) for m in mine] == [("in", ""), ("out", kb.message("data_deleted", "pt"))]
    assert theirs[0].text == EMERGENCY, "the other user's messages are untouched"
    (case,) = rows(rest, Escalation)
    assert case.conversation_id == theirs[0].conversation_id
    assert [r["text"] for r in user.say("🙂")] == [kb.message("empty_prompt", "en")], "the language choice is gone"
    assert [u.area for u in rows(rest, User)] == [None, None], "the area is gone too"


def test_a_question_about_deleting_data_is_not_a_command(rest: TestClient, kb: KnowledgeBase) -> None:
    user = Chat(rest)
    user.say(EMERGENCY)
    user.say("how do I delete my data?")
    assert rows(rest, Escalation), "nothing was deleted"


def test_line_user_deletes_their_data_from_the_rich_menu_or_by_writing_it(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.say("Tiếng Việt")
    user.say(EMERGENCY)
    user.send(line_event("postback", user.user_id, user.fake.issue_reply_token(user.user_id),
                         postback={"data": "consult:delete_data"}))
    assert user.texts()[-1] == kb.message("data_deleted", "vi")
    assert rows(user.client, Escalation) == []
    other = LineUser(user.client, user.fake)
    other.say("日本語")
    other.say(kb.message("command_delete_my_data", "ja"))
    assert other.texts()[-1] == kb.message("data_deleted", "ja")


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str,
            *argv: str) -> tuple[int, Any]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    capsys.readouterr()
    status = main(["privacy", *argv])
    return status, json.loads(capsys.readouterr().out)


def test_office_exports_then_erases_one_user(
    rest: TestClient, database_url: str, kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, other = Chat(rest), Chat(rest)
    user.say("한국어")
    user.say(EMERGENCY)
    user.say("Morioka")
    other.say("Hello there")
    status, data = run_cli(monkeypatch, capsys, database_url, "export", "--platform", "rest", "--user", user.sender)
    assert status == 0
    assert data["user"]["language"] == "ko"
    assert data["user"]["area"] == "盛岡市"
    assert [i["platform_user_id"] for i in data["identities"]] == [user.sender]
    texts = [m["text"] for m in data["messages"]]
    assert texts[:2] == ["한국어", kb.message("language_changed", "ko")]
    assert EMERGENCY in texts and "Hello there" not in texts
    assert [(e["reason"], e["urgent"]) for e in data["escalations"]] == [("safety", True)]
    assert any(item["text"] == EMERGENCY for item in data["escalations"][0]["transcript"])

    status, result = run_cli(monkeypatch, capsys, database_url, "delete", "--platform", "rest", "--user", user.sender)
    assert status == 0 and result["messages"] == len(texts)
    assert [i.platform_user_id for i in rows(rest, Identity)] == [other.sender]
    assert len(rows(rest, User)) == 1 and rows(rest, Escalation) == []
    assert {m.text for m in rows(rest, Message) if m.direction == "in"} == {"Hello there"}
    status, result = run_cli(monkeypatch, capsys, database_url, "export", "--platform", "rest", "--user", user.sender)
    assert status == 1 and "no user" in result["error"]


def age(client: TestClient, days: float, *where: object) -> None:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        session.execute(update(Message).where(*where).values(created_at=utcnow() - dt.timedelta(days=days)))
        session.execute(update(Escalation).values(created_at=utcnow() - dt.timedelta(days=days)))
        session.commit()


def test_retention_removes_old_messages_and_keeps_redelivery_dedup(
    rest: TestClient, kb: KnowledgeBase
) -> None:
    old, recent = Chat(rest), Chat(rest)
    old.say(EMERGENCY, message_id="evt-old")
    old.say("🙂")
    age(rest, 40)
    recent.say("🙂 🙂")
    assistant = rest.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        counts = purge(session, 30)
        session.commit()
    assert counts == {"deleted": 4, "emptied": 1, "transcripts": 1}
    stored = rows(rest, Message)
    assert [(m.platform_event_id, m.text) for m in stored] == [
        ("evt-old", ""), (None, "🙂 🙂"), (None, kb.message("empty_prompt", "en"))]
    assert all(item["text"] == "" for item in rows(rest, Escalation)[0].transcript)
    assert [r["text"] for r in old.say(EMERGENCY, message_id="evt-old")] == [], "a late redelivery is not answered"
    age(rest, 80, Message.platform_event_id == "evt-old")
    with assistant.sessions() as session:
        assert purge(session, 30)["deleted"] == 1
        session.commit()
    assert rows(rest, Message, Message.platform_event_id == "evt-old") == []


def test_retention_is_applied_by_the_background_loop(
    database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str, kb: KnowledgeBase
) -> None:
    client = make_client(database_url, dead_engine_url, retention_days=7, retention_check_seconds=0.2)
    user = Chat(client)
    user.say("🙂")
    user.say("Español")
    age(client, 8)
    wait_until(lambda: not rows(client, Message), timeout=10)
    assert [r["text"] for r in user.say("🙂")] == [kb.message("empty_prompt", "es")], "the user's choice is kept"


def test_retention_command(
    rest: TestClient, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    user = Chat(rest)
    user.say("🙂")
    status, counts = run_cli(monkeypatch, capsys, database_url, "purge", "--days", "7")
    assert status == 0 and counts == {"deleted": 0, "emptied": 0, "transcripts": 0}
    age(rest, 8)
    monkeypatch.setenv("CONSULT_RETENTION_DAYS", "7")
    status, counts = run_cli(monkeypatch, capsys, database_url, "purge")
    assert status == 0 and counts == {"deleted": 2, "emptied": 0, "transcripts": 0}
    assert rows(rest, Message) == []
    monkeypatch.delenv("CONSULT_RETENTION_DAYS")
    status, result = run_cli(monkeypatch, capsys, database_url, "purge")
    assert status == 2 and "retention" in result["error"]
