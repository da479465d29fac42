"""The staff JSON API (/api/v1) through the test client: tokens, happy paths, errors with reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot import staff as staff_accounts
from bot.db.models import AuditEntry, Conversation, Escalation
from bot.knowledge import KnowledgeBase
from bot.translation import Translator
from tests.conftest import Chat

EMERGENCY = "My friend collapsed and is not breathing"


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str) -> TestClient:
    return make_client(database_url, dead_engine_url)


def token_for(client: TestClient, login: str = "api-user", role: str = "staff") -> dict[str, str]:
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        member = staff_accounts.create_staff(session, login, "correct horse battery staple", role=role)
        token = staff_accounts.create_token(session, member.id, "tests")
        session.commit()
    return {"Authorization": f"Bearer {token}"}


def open_case(client: TestClient, chat: Chat | None = None) -> int:
    (chat or Chat(client)).say(EMERGENCY)
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        return max(session.scalars(select(Escalation.id)))


@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "missing Authorization"), ("Basic dXNlcjpwYXNz", "Bearer <token>"), ("Bearer ", "Bearer <token>"),
     ("Bearer cst_not-a-real-token", "unknown or revoked"), ("Bearer something-else", "unknown or revoked")],
)
def test_no_or_bad_token_is_401_with_a_reason(client: TestClient, header: str | None, reason: str) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [("GET", "/api/v1/escalations"), ("GET", "/api/v1/escalations/1"),
                         ("POST", "/api/v1/escalations/1/reply"), ("POST", "/api/v1/escalations/1/resolve")]:
        response = client.request(method, path, headers=headers, json={"text_ja": "はい"})
        assert response.status_code == 401, (method, path)
        assert reason in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_revoked_token_stops_working(client: TestClient) -> None:
    headers = token_for(client)
    assert client.get("/api/v1/escalations", headers=headers).status_code == 200
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        (token_id,) = session.scalars(select(staff_accounts.ApiToken.id))
        assert staff_accounts.revoke_token(session, token_id)
        session.commit()
    assert client.get("/api/v1/escalations", headers=headers).status_code == 401


def test_list_read_reply_hand_back(client: TestClient) -> None:
    chat = Chat(client)
    case_id = open_case(client, chat)
    headers = token_for(client)

    listed = client.get("/api/v1/escalations", headers=headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["total"] == 1 and body["page"] == 1 and body["pages"] == 1
    (row,) = body["escalations"]
    assert row["id"] == case_id and row["urgent"] is True and row["status"] == "open" and row["platform"] == "rest"
    assert client.get("/api/v1/escalations?urgent=0", headers=headers).json()["total"] == 0
    assert client.get("/api/v1/escalations?status=resolved", headers=headers).json()["total"] == 0

    case = client.get(f"/api/v1/escalations/{case_id}", headers=headers).json()
    assert case["id"] == case_id and case["language"] == "en"
    assert any(line["text"] == EMERGENCY and line["author"] == "user" for line in case["transcript"])

    preview = client.post(f"/api/v1/escalations/{case_id}/preview", headers=headers, json={"text_ja": "お電話します。"})
    assert preview.status_code == 200
    assert preview.json()["translation"] is None and preview.json()["notice_ja"]

    sent = client.post(f"/api/v1/escalations/{case_id}/reply", headers=headers, json={"text_ja": "お電話します。"})
    assert sent.status_code == 200 and sent.json()["delivered"] is True and sent.json()["message_ids"]
    assert any("お電話します。" in reply["text"] for reply in chat.later())
    assert client.get(f"/api/v1/escalations/{case_id}", headers=headers).json()["status"] == "waiting"

    back = client.post(f"/api/v1/escalations/{case_id}/handback", headers=headers)
    assert back.status_code == 200 and back.json() == {"id": case_id, "status": "resolved", "handler": "bot"}
    assert client.get(f"/api/v1/escalations/{case_id}", headers=headers).json()["status"] == "resolved"
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        actions = {a.action for a in session.scalars(select(AuditEntry))}
    assert {"reply", "hand_back"} <= actions


def test_assign_and_resolve(client: TestClient) -> None:
    case_id = open_case(client)
    headers = token_for(client, "owner")
    assigned = client.post(f"/api/v1/escalations/{case_id}/assign", headers=headers)
    assert assigned.status_code == 200 and assigned.json()["status"] == "assigned"
    mine = client.get("/api/v1/escalations?mine=1", headers=headers).json()
    assert [row["id"] for row in mine["escalations"]] == [case_id]
    resolved = client.post(f"/api/v1/escalations/{case_id}/resolve", headers=headers)
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("GET", "/api/v1/escalations?status=lost", None, 400, "状態"),
        ("GET", "/api/v1/escalations?urgent=perhaps", None, 400, "緊急"),
        ("GET", "/api/v1/escalations?per_page=1000", None, 400, "per_page"),
        ("GET", "/api/v1/escalations?page=-1", None, 400, "page"),
        ("GET", "/api/v1/escalations/999999", None, 404, ""),
        ("GET", "/api/v1/escalations/abc", None, 400, "escalation_id"),
        ("POST", "/api/v1/escalations/{id}/reply", {}, 400, "text_ja"),
        ("POST", "/api/v1/escalations/{id}/reply", {"text_ja": "   "}, 400, "text_ja"),
        ("POST", "/api/v1/escalations/{id}/reply", {"text_ja": 5}, 400, "text_ja"),
        ("POST", "/api/v1/escalations/{id}/reply", {"text_ja": "はい", "extra": 1}, 400, "extra"),
        ("POST", "/api/v1/escalations/{id}/reply", b"not json", 400, ""),
        ("POST", "/api/v1/escalations/999999/reply", {"text_ja": "はい"}, 404, ""),
        ("POST", "/api/v1/escalations/{id}/preview", {"text_ja": ""}, 400, "text_ja"),
        ("POST", "/api/v1/escalations/{id}/assign", {"assignee_id": 0}, 400, "assignee_id"),
        ("POST", "/api/v1/escalations/{id}/assign", {"assignee_id": 424242}, 404, ""),
    ],
)
def test_bad_input_is_a_4xx_with_a_reason(
    client: TestClient, method: str, path: str, body: object, status: int, reason: str
) -> None:
    case_id = open_case(client)
    headers = token_for(client)
    kwargs: dict[str, object] = {"content": body, "headers": {**headers, "content-type": "application/json"}} \
        if isinstance(body, bytes) else {"json": body, "headers": headers}
    response = client.request(method, path.replace("{id}", str(case_id)), **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error and reason in error


def test_preview_and_reply_translate_into_the_users_language(
    make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str, translator: Translator,
    kb: KnowledgeBase,
) -> None:
    client = make_client(database_url, dead_engine_url, translation_dir=translator.home)
    chat = Chat(client)
    chat.say("Tôi có câu hỏi về việc gia hạn thẻ cư trú.")
    headers = token_for(client, "translator-user")
    helpdesk = client.app.state.helpdesk  # type: ignore[attr-defined]
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        (conversation_id,) = session.scalars(select(Conversation.id))
        member = staff_accounts.get_staff(session, 1)
    assert member is not None
    case_id = helpdesk.take_over(conversation_id, member)

    preview = client.post(f"/api/v1/escalations/{case_id}/preview", headers=headers,
                          json={"text_ja": "明日の午前中にお電話します。"})
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["target_language"] == "vi" and body["notice_ja"] is None
    assert body["translation"] == "Chúng tôi sẽ gọi cho bạn vào sáng mai."

    edited = {"text_ja": "明日の午前中にお電話します。", "translation": "Chúng tôi sẽ gọi lại vào sáng mai."}
    sent = client.post(f"/api/v1/escalations/{case_id}/reply", headers=headers, json=edited)
    assert sent.status_code == 200 and sent.json()["translated"] is True
    texts = [reply["text"] for reply in chat.later()]
    assert "Chúng tôi sẽ gọi lại vào sáng mai." in texts, "the edited translation is what the user reads"
    note = kb.message("staff_reply_translated", "vi")
    assert any(note in text and "明日の午前中にお電話します。" in text for text in texts)
