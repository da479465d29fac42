"""The staff console through FastAPI's test client: every route guarded, CSRF, sessions, pages, errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot import staff as staff_accounts
from bot.db.models import AuditEntry, CannedReply, Escalation, KbSuggestion
from bot.web.security import COOKIE, SECRET_FILE
from tests.conftest import Chat

PASSWORD = "correct horse battery staple"
EMERGENCY = "My friend collapsed and is not breathing"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_staff(client: TestClient, login: str, role: str = "staff") -> int:
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        member = staff_accounts.create_staff(session, login, PASSWORD, role=role, display_name=f"{login}さん")
        session.commit()
    return member.id


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has a CSRF token"
    return match.group(1)


def log_in(client: TestClient, login: str, password: str = PASSWORD) -> Any:
    token = csrf_of(client.get("/console/login").text)
    return client.post("/console/login", data={"login": login, "password": password, "csrf_token": token},
                       follow_redirects=False)


def console_routes(client: TestClient, ids: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Every console and API route as ``(method, path)``, a path parameter filled from ``ids`` (else "1")."""
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route.original_route, APIRoute) and (route.path or "").startswith(("/console", "/api/")):
            for method in sorted(route.methods or ()):
                yield method, re.sub(r"\{([^}]+)\}", lambda m: (ids or {}).get(m.group(1), "1"), route.path or "")


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str) -> TestClient:
    return make_client(database_url, dead_engine_url)


def open_case(client: TestClient, text: str = EMERGENCY) -> int:
    Chat(client).say(text)
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        return max(session.scalars(select(Escalation.id)))


def test_every_console_and_api_route_refuses_an_anonymous_request(client: TestClient) -> None:
    routes = list(console_routes(client))
    assert len(routes) > 20
    for method, path in routes:
        if path == "/console/login":
            continue
        response = client.request(method, path, follow_redirects=False)
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
        elif method == "GET":
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/console/login?next=%2Fconsole"), (method, path)
        else:
            assert response.status_code == 401, (method, path)
            assert "ログインしてください" in response.text


def test_every_console_post_refuses_a_missing_or_wrong_csrf_token(client: TestClient) -> None:
    add_staff(client, "admin", role="admin")
    assert log_in(client, "admin").status_code == 303
    posts = [path for method, path in console_routes(client) if method == "POST" and path.startswith("/console")]
    assert "/console/cases/1/reply" in posts and "/console/login" in posts
    for path in posts:
        missing = client.post(path, data={"text_ja": "こんにちは"}, follow_redirects=False)
        assert missing.status_code == 403, path
        assert "CSRFトークンがありません" in missing.text
        wrong = client.post(path, data={"csrf_token": "forged"}, follow_redirects=False)
        assert wrong.status_code == 403, path
        assert "CSRFトークンが正しくありません" in wrong.text


def test_login_sets_a_signed_httponly_lax_cookie_and_rotates_the_csrf_token(client: TestClient) -> None:
    add_staff(client, "tanaka")
    before = csrf_of(client.get("/console/login").text)
    response = log_in(client, "tanaka")
    assert response.status_code == 303 and response.headers["location"] == "/console/queue"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    queue = client.get("/console/queue")
    assert queue.status_code == 200 and "tanakaさん（職員）" in queue.text
    assert csrf_of(queue.text) != before
    signed = client.cookies[COOKIE]
    client.cookies.clear()
    client.cookies.set(COOKIE, signed[:-3] + ("AAA" if not signed.endswith("AAA") else "BBB"))
    assert client.get("/console/queue", follow_redirects=False).status_code == 303


def test_the_session_secret_is_generated_once_into_the_data_dir(client: TestClient) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    path = settings.data_dir / SECRET_FILE
    assert len(path.read_text().strip()) >= 48
    assert path.stat().st_mode & 0o777 == 0o600


def test_logout_ends_the_session(client: TestClient) -> None:
    add_staff(client, "sato")
    log_in(client, "sato")
    token = csrf_of(client.get("/console/queue").text)
    response = client.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/login"
    assert client.get("/console/queue", follow_redirects=False).status_code == 303


def test_wrong_password_unknown_login_and_lockout(client: TestClient) -> None:
    add_staff(client, "ito")
    wrong = log_in(client, "ito", "wrong password!!")
    assert wrong.status_code == 401 and "ログインIDまたはパスワードが違います。" in wrong.text
    unknown = log_in(client, "nobody", "wrong password!!")
    assert unknown.status_code == 401 and "ログインIDまたはパスワードが違います。" in unknown.text
    for _ in range(3):
        log_in(client, "ito", "wrong password!!")
    locked = log_in(client, "ito", "wrong password!!")
    assert locked.status_code == 423 and "ロックされています" in locked.text
    assert log_in(client, "ito").status_code == 423
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        actions = [a.action for a in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions.count("login_failed") == 7 and "account_locked" in actions


def test_too_many_failures_from_one_address_are_refused(
    make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str
) -> None:
    client = make_client(database_url, dead_engine_url, console_login_limit=3)
    add_staff(client, "kato")
    for _ in range(3):
        assert log_in(client, "someone", "guess guess guess").status_code == 401
    refused = log_in(client, "kato")
    assert refused.status_code == 429 and "ログイン失敗が多すぎます" in refused.text


def test_next_only_leads_inside_the_console(client: TestClient) -> None:
    add_staff(client, "yamada")
    for target, expected in [("/console/audit", "/console/audit"), ("https://evil.example/", "/console/queue"),
                             ("//evil.example/console/", "/console/queue")]:
        client.cookies.clear()
        token = csrf_of(client.get("/console/login").text)
        response = client.post("/console/login", follow_redirects=False,
                               data={"login": "yamada", "password": PASSWORD, "csrf_token": token, "next": target})
        assert response.headers["location"] == expected


def test_staff_get_403_on_admin_pages_and_admin_actions(client: TestClient) -> None:
    add_staff(client, "staff1")
    log_in(client, "staff1")
    for path in ("/console/audit", "/console/suggestions", "/console/staff"):
        response = client.get(path)
        assert response.status_code == 403 and "管理者だけ" in response.text, path
    token = csrf_of(client.get("/console/canned").text)
    created = client.post("/console/canned", data={"csrf_token": token, "title": "t", "text_ja": "本文"})
    assert created.status_code == 403


def test_admin_manages_canned_replies_and_sees_the_audit_log(client: TestClient) -> None:
    add_staff(client, "boss", role="admin")
    log_in(client, "boss")
    token = csrf_of(client.get("/console/canned").text)
    response = client.post("/console/canned", data={"csrf_token": token, "title": "折り返し",
                                                     "text_ja": "明日の午前中にお電話します。"})
    assert response.status_code == 200 and "定型文を保存しました。" in response.text
    assert "明日の午前中にお電話します。" in response.text
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        (canned_id,) = session.scalars(select(CannedReply.id))
    client.post(f"/console/canned/{canned_id}", data={"csrf_token": token, "title": "折り返し電話",
                                                      "text_ja": "後ほどお電話します。"})
    assert "後ほどお電話します。" in client.get("/console/canned").text
    empty = client.post("/console/canned", data={"csrf_token": token, "title": "", "text_ja": ""})
    assert empty.status_code == 400 and "題名と本文" in empty.text
    client.post(f"/console/canned/{canned_id}/delete", data={"csrf_token": token})
    assert "定型文はまだありません。" in client.get("/console/canned").text
    audit = client.get("/console/audit")
    assert audit.status_code == 200 and "ログイン" in audit.text


def test_queue_lists_cases_and_filters_bad_values_with_a_reason(client: TestClient) -> None:
    case_id = open_case(client)
    add_staff(client, "queue", role="admin")
    log_in(client, "queue")
    page = client.get("/console/queue")
    assert page.status_code == 200 and f'href="/console/cases/{case_id}"' in page.text and "緊急" in page.text
    assert f"/console/cases/{case_id}" not in client.get("/console/queue?urgent=0").text
    assert f"/console/cases/{case_id}" in client.get("/console/queue?urgent=1&status=open&language=en").text
    for query, reason in [("status=lost", "状態"), ("urgent=maybe", "緊急"), ("age=forever", "経過時間"),
                          ("page=0", "page"), ("page=abc", "page"), ("language=xx", "言語")]:
        response = client.get(f"/console/queue?{query}")
        assert response.status_code == 400, query
        assert reason in response.text, query


def test_case_page_take_reply_without_a_model_and_resolve(client: TestClient) -> None:
    chat = Chat(client)
    chat.say(EMERGENCY)
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        case_id = max(session.scalars(select(Escalation.id)))
    add_staff(client, "worker")
    log_in(client, "worker")
    page = client.get(f"/console/cases/{case_id}")
    assert page.status_code == 200 and EMERGENCY in page.text
    token = csrf_of(page.text)
    taken = client.post(f"/console/cases/{case_id}/take", data={"csrf_token": token})
    assert "担当者を設定しました。" in taken.text and "workerさん" in taken.text
    preview = client.post(f"/console/cases/{case_id}/preview", data={"csrf_token": token, "text_ja": "お電話します。"})
    assert preview.status_code == 200 and 'id="send"' in preview.text
    assert 'id="no-translation"' in preview.text
    sent = client.post(f"/console/cases/{case_id}/reply", data={"csrf_token": token, "text_ja": "お電話します。"})
    assert sent.status_code == 200 and "返信を" in sent.text
    assert any("お電話します。" in reply["text"] for reply in chat.later())
    empty = client.post(f"/console/cases/{case_id}/reply", data={"csrf_token": token, "text_ja": "  "})
    assert empty.status_code == 400 and "返信（日本語）を入力してください。" in empty.text
    proposed = client.post(f"/console/cases/{case_id}/propose",
                           data={"csrf_token": token, "question_ja": "質問", "answer_ja": "回答"})
    assert "知識ベースへの追加を提案しました。" in proposed.text
    resolved = client.post(f"/console/cases/{case_id}/resolve", data={"csrf_token": token})
    assert "解決済みにしました。" in resolved.text
    assert client.get("/console/cases/999999").status_code == 404


def test_admin_accepts_and_rejects_knowledge_base_proposals(
    make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str, tmp_path: Path
) -> None:
    drafts = tmp_path / "drafts"
    client = make_client(database_url, dead_engine_url, kb_drafts_dir=drafts)
    case_id = open_case(client)
    add_staff(client, "chief", role="admin")
    log_in(client, "chief")
    token = csrf_of(client.get(f"/console/cases/{case_id}").text)
    for question in ("在留カードを更新したい", "<b>太字</b>の質問"):
        client.post(f"/console/cases/{case_id}/propose",
                    data={"csrf_token": token, "question_ja": question, "answer_ja": "入管で手続きします。"})
    page = client.get("/console/suggestions")
    assert "在留カードを更新したい" in page.text and "&lt;b&gt;太字&lt;/b&gt;の質問" in page.text
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        first, second = session.scalars(select(KbSuggestion.id).order_by(KbSuggestion.id))
    accepted = client.post(f"/console/suggestions/{first}/accept", data={"csrf_token": token})
    assert accepted.status_code == 200 and "採用しました。" in accepted.text
    assert [p.suffix for p in drafts.iterdir()] == [".yml"]
    rejected = client.post(f"/console/suggestions/{second}/reject", data={"csrf_token": token})
    assert "却下しました。" in rejected.text
    assert "提案はありません。" in client.get("/console/suggestions").text
    again = client.post(f"/console/suggestions/{second}/reject", data={"csrf_token": token})
    assert again.status_code in (400, 404) and again.text
