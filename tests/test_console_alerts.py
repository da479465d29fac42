"""The console's disaster pages through the real app: compose → preview → send → progress and
report, the safety check-in dashboard, the disaster-mode switch and its banner, and bad input.
Delivery is the app's own broadcast worker against the fake LINE and Telegram servers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.broadcast import is_disaster_mode
from bot.db.models import AuditEntry, Identity, User
from bot.knowledge import KnowledgeBase
from tests.conftest import line_settings, telegram_settings, wait_until
from tests.fakes import FakeLine, FakeTelegram, line_event, webhook_body
from tests.test_console import add_staff, csrf_of, log_in

EARTHQUAKE = {"template": "earthquake", "field_area": "宮古市", "field_time": "12月5日 2時10分"}


@pytest.fixture
def client(make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str, fake_line: FakeLine,
           fake_telegram: FakeTelegram) -> TestClient:
    app = make_client(database_url, dead_engine_url, **line_settings(fake_line), **telegram_settings(fake_telegram))
    add_staff(app, "night", role="staff")
    assert log_in(app, "night").status_code == 303
    return app


def subscriber(client: TestClient, platform: str, address: str, language: str, area: str | None = None) -> int:
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        user = User(language=language, area=area)
        session.add(user)
        session.flush()
        session.add(Identity(user_id=user.id, platform=platform, platform_user_id=address))
        session.commit()
        return user.id


def submit(client: TestClient, path: str, pairs: list[tuple[str, str]]) -> Any:
    """A form POST as the browser sends it (a name may repeat, e.g. several languages)."""
    return client.post(path, content=urlencode(pairs), follow_redirects=False,
                       headers={"content-type": "application/x-www-form-urlencoded"})


def post(client: TestClient, path: str, data: dict[str, Any]) -> Any:
    token = csrf_of(client.get("/console/alerts").text)
    return submit(client, path, [*data.items(), ("csrf_token", token)])


def send_previewed(client: TestClient, preview: Any) -> Any:
    """Press "send" on a preview page: it posts the hidden fields it carries."""
    form = preview.text[preview.text.index('<form method="post" action="/console/alerts"'):]
    form = form[: form.index("</form>")]
    return submit(client, "/console/alerts", re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


def figure(html: str, name: str) -> int:
    match = re.search(rf'id="{name}">(\d+)<', html)
    assert match, f"{name} is on the page"
    return int(match.group(1))


def test_an_alert_is_previewed_in_every_readers_language_sent_once_and_reported(
    client: TestClient, fake_line: FakeLine, fake_telegram: FakeTelegram, kb: KnowledgeBase
) -> None:
    line_vi, line_ne = f"U{uuid.uuid4().hex}", f"U{uuid.uuid4().hex}"
    subscriber(client, "line", line_vi, "vi", "宮古市")
    subscriber(client, "line", line_ne, "ne", "宮古市")
    subscriber(client, "telegram", "7001", "ja-easy", "宮古市")
    subscriber(client, "telegram", "7002", "en", "盛岡市")

    page = client.get("/console/alerts")
    assert page.status_code == 200 and "災害モード: <span id=\"disaster-state\">停止中" in page.text
    compose = client.get("/console/alerts/new?template=earthquake")
    assert compose.status_code == 200 and 'name="field_area"' in compose.text and 'name="field_time"' in compose.text
    assert "宮古市" in compose.text  # the areas users gave are suggested

    assert 'name="area" value="宮古市" checked' not in compose.text and "宮古市（3）" in compose.text
    preview = post(client, "/console/alerts/preview", {**EARTHQUAKE, "areas": "Miyako"})  # as users write it
    assert preview.status_code == 200
    assert '<dd id="audience-total"><strong>3人</strong>' in preview.text
    shown = dict(re.findall(r'data-language="([^"]+)">.*?<pre>(.*?)</pre>', preview.text, re.S))
    assert sorted(shown) == ["ja-easy", "ne", "vi"]
    assert "宮古市" in shown["vi"] and "12月5日 2時10分" in shown["vi"] and "Động đất" in shown["vi"]
    assert "地震(じしん)" in shown["ja-easy"]
    assert "3人に送信する" in preview.text
    assert not fake_line.calls_to("/v2/bot/message") and not fake_telegram.calls_to("/sendMessage")  # only a preview

    sent = send_previewed(client, preview)
    assert sent.status_code == 303
    alert_url = sent.headers["location"]
    assert re.fullmatch(r"/console/alerts/\d+", alert_url)
    wait_until(lambda: client.get(f"{alert_url}/progress").json()["status"] == "done", 20)
    progress = client.get(f"{alert_url}/progress").json()
    assert (progress["total"], progress["totals"], progress["percent"]) == (3, {"sent": 3}, 100)

    report = client.get(alert_url)
    assert report.status_code == 200 and "送信を開始しました。" in report.text
    assert ">完了</span>" in report.text
    assert (figure(report.text, "figure-total"), figure(report.text, "figure-sent")) == (3, 3)
    assert figure(report.text, "figure-failed") == 0
    labels = dict(client.app.state.helpdesk.language_choices())  # type: ignore[attr-defined]
    rows = {(platform, language): [int(n) for n in re.findall(r"<td>(\d+)</td>", cells)]
            for platform, language, cells in re.findall(
                r"<tr><td>(LINE|Telegram)</td><td>([^<]+)</td>\s*((?:<td>\d+</td>)+)</tr>", report.text)}
    sent_failed = {key: (counts[0], counts[2]) for key, counts in rows.items()}  # columns: sent, queued, failed, ...
    assert sent_failed == {("LINE", labels["vi"]): (1, 0), ("LINE", labels["ne"]): (1, 0),
                           ("Telegram", labels["ja-easy"]): (1, 0)}
    line_texts = [m["text"] for user in (line_vi, line_ne) for m in fake_line.delivered(user)]
    telegram_texts = [m["text"] for m in fake_telegram.delivered(7001)]
    assert len(line_texts) == 2 and len(telegram_texts) == 1
    assert telegram_texts[0].startswith("【地震(じしん)】") and "宮古市" in telegram_texts[0]
    assert not fake_telegram.delivered(7002)  # Morioka is not in the area

    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        actions = [row.action for row in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert "alert_sent" in actions


def test_a_checkin_alert_shows_answers_by_area_on_its_page(
    client: TestClient, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    users = [f"U{uuid.uuid4().hex}" for _ in range(3)]
    for user, area in zip(users, ("宮古市", "宮古市", "釜石市"), strict=True):
        subscriber(client, "line", user, "en", area)
    preview = post(client, "/console/alerts/preview", {"template": "checkin", "field_area": "沿岸部"})
    alert_url = send_previewed(client, preview).headers["location"]
    wait_until(lambda: all(fake_line.delivered(user) for user in users), 20)

    for user, answer in ((users[0], 1), (users[1], 0), (users[2], 1)):
        actions = [item["action"] for item in fake_line.delivered(user)[-1]["quickReply"]["items"]]
        body = webhook_body(line_event("postback", user, fake_line.issue_reply_token(user),
                                       postback={"data": actions[answer]["data"]}))
        response = client.post("/webhooks/line", content=body, headers={
            "content-type": "application/json", "x-line-signature": fake_line.sign(body)})
        assert response.status_code == 200
    wait_until(lambda: client.get(f"{alert_url}/progress").json()["checkin"]["totals"] == {"safe": 1, "help": 2}, 20)

    page = client.get(alert_url).text
    assert (figure(page, "checkin-safe"), figure(page, "checkin-help"), figure(page, "checkin-none")) == (1, 2, 0)
    assert "<tr><td>宮古市</td><td>1</td><td>1</td></tr>" in page
    assert "<tr><td>釜石市</td><td>0</td><td>1</td></tr>" in page
    assert 'href="/console/queue?urgent=1"' in page
    queue = client.get("/console/queue?urgent=1").text
    assert queue.count("安否確認: 支援が必要") == 2


def test_disaster_mode_switch_shows_a_banner_and_is_audited(client: TestClient, fake_line: FakeLine,
                                                            kb: KnowledgeBase) -> None:
    assert "災害モード中" not in client.get("/console/queue").text
    switched = post(client, "/console/disaster-mode", {"state": "on"})
    assert switched.status_code == 303 and switched.headers["location"] == "/console/alerts"
    after = client.get("/console/alerts").text
    assert "災害モードを開始しました。" in after and "災害モードを終了する" in after
    assert is_disaster_mode(client.app.state.assistant.sessions)  # type: ignore[attr-defined]
    for page in ("/console/queue", "/console/alerts", "/console/canned"):
        assert '<p class="disaster-banner" role="alert"><strong>災害モード中</strong>' in client.get(page).text

    user = f"U{uuid.uuid4().hex}"
    body = webhook_body(line_event("follow", user, fake_line.issue_reply_token(user), follow={"isUnblocked": False}))
    client.post("/webhooks/line", content=body,
                headers={"content-type": "application/json", "x-line-signature": fake_line.sign(body)})
    wait_until(lambda: len(fake_line.delivered(user)) >= 2, 10)
    assert fake_line.delivered(user)[0]["text"] == kb.message("disaster_mode_notice", "en")

    assert post(client, "/console/disaster-mode", {"state": "off"}).status_code == 303
    assert not is_disaster_mode(client.app.state.assistant.sessions)  # type: ignore[attr-defined]
    assert "災害モード中" not in client.get("/console/queue").text
    with client.app.state.assistant.sessions() as session:  # type: ignore[attr-defined]
        actions = [row.action for row in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions[-2:] == ["disaster_mode_on", "disaster_mode_off"]
    audit_page = client.get("/console/audit")
    assert audit_page.status_code == 403  # the audit log is for admins; staff may still switch the mode


@pytest.mark.parametrize(("data", "reason"), [
    ({"template": "volcano"}, "テンプレート「volcano」はありません。"),
    ({"template": "earthquake", "field_area": "宮古市"}, "入力してください: 日時"),
    ({"template": "shelter_opened", "field_area": "a", "field_name": "b", "field_address": "c",
      "field_map_url": "javascript:alert(1)"}, "地図のURLは https:// で始めてください。"),
    ({**EARTHQUAKE, "language": "fr"}, "言語 fr はありません。"),
    ({**EARTHQUAKE, "field_area": "x" * 301}, "地域 は300文字以内で入力してください。"),
    ({**EARTHQUAKE, "areas": "Miyako, Tokyo"}, "地域「Tokyo」は市町村の一覧にありません。"),
    ({**EARTHQUAKE, "state": "on"}, None),
])
def test_bad_alert_input_gets_a_reason_and_sends_nothing(
    client: TestClient, fake_line: FakeLine, data: dict[str, str], reason: str | None
) -> None:
    subscriber(client, "line", f"U{uuid.uuid4().hex}", "en")
    for path in ("/console/alerts/preview", "/console/alerts"):
        response = post(client, path, data)
        if reason is None:  # a stray field is ignored
            assert response.status_code in (200, 303), path
            continue
        assert response.status_code == 400, path
        assert reason in response.text
    if reason is not None:
        assert not fake_line.calls_to("/v2/bot/message")
    assert post(client, "/console/disaster-mode", {"state": "maybe"}).status_code == 400
    assert client.get("/console/alerts/new?template=volcano").status_code == 400
    assert client.get("/console/alerts/999999").status_code == 404
    assert client.get("/console/alerts/999999/progress").status_code == 404


def test_an_alert_over_lines_quota_is_not_sent_and_the_page_says_why(
    client: TestClient, fake_line: FakeLine
) -> None:
    for _ in range(3):
        subscriber(client, "line", f"U{uuid.uuid4().hex}", "en")
    fake_line.quota_limit, fake_line.quota_used = 10, 9
    index = client.get("/console/alerts").text
    assert "LINE の今月の送信数: 9 / 上限 10（残り 1）" in index
    preview = post(client, "/console/alerts/preview", EARTHQUAKE)
    assert "残り 1 / 10" in preview.text
    sent = send_previewed(client, preview)
    assert sent.status_code == 303
    page = client.get(sent.headers["location"]).text
    assert "送信しませんでした（LINE の今月の送信可能数が足りません）" in page
    assert ">送信せず</span>" in page
    assert not fake_line.calls_to("/v2/bot/message")


def test_no_platform_configured_means_no_alert_form(
    make_client: Callable[..., TestClient], database_url: str, dead_engine_url: str
) -> None:
    app = make_client(database_url, dead_engine_url)
    add_staff(app, "solo")
    log_in(app, "solo")
    page = app.get("/console/alerts").text
    assert "LINE も Telegram も設定されていないため、一斉送信はできません" in page
    response = post(app, "/console/alerts", EARTHQUAKE)
    assert response.status_code == 400
    assert "LINE も Telegram も設定されていないため、一斉送信はできません。" in response.text
