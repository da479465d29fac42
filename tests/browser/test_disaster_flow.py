"""The night-duty staff member's disaster flow in the browser: disaster mode on (banner), a safety
check-in alert composed, previewed and sent, its progress followed live until done, and an "I need
help" answer appearing on the dashboard without reloading the page."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from bot.db.models import Identity, User
from tests.browser.conftest import Console, log_in
from tests.conftest import line_settings
from tests.fakes import FakeLine, line_event, webhook_body


def subscribe(console: Console, address: str, language: str, area: str) -> None:
    with console.assistant.sessions() as session:
        user = User(language=language, area=area)
        session.add(user)
        session.flush()
        session.add(Identity(user_id=user.id, platform="line", platform_user_id=address))
        session.commit()


def test_checkin_alert_sent_followed_live_and_answers_counted(
    page: Page, serve: Callable[..., Console], database_url: str, dead_engine_url: str, fake_line: FakeLine
) -> None:
    console = serve(database_url, dead_engine_url, **line_settings(fake_line))
    users = {f"U{uuid.uuid4().hex}": place for place in (("vi", "宮古市"), ("ne", "宮古市"), ("en", "盛岡市"))}
    for address, (language, area) in users.items():
        subscribe(console, address, language, area)
    console.add_staff("night", name="夜間担当")
    log_in(page, console, "night")

    page.get_by_role("link", name="災害・一斉送信").click()
    expect(page.locator("#disaster-state")).to_have_text("停止中")
    page.get_by_role("button", name="災害モードを開始する").click()
    expect(page.get_by_role("status")).to_have_text("災害モードを開始しました。利用者への案内が災害時の内容に変わります。")
    expect(page.locator(".disaster-banner")).to_contain_text("災害モード中")
    expect(page.locator("#disaster-state")).to_have_text("実施中")

    page.get_by_role("link", name="安否確認 安否確認ボタン付き").click()
    page.get_by_label("地域（必須）").fill("宮古市沿岸部")
    page.get_by_label("宮古市（2）").check()
    page.get_by_role("button", name="文面と送信先を確認").click()
    expect(page.locator("#audience-total")).to_have_text("2人（LINE 2人）")
    expect(page.locator("article[data-language]")).to_have_count(2)
    expect(page.locator("article[data-language=vi] pre")).to_contain_text("宮古市沿岸部")
    expect(page.locator(".disaster-banner")).to_be_visible()
    page.get_by_role("button", name="2人に送信する").click()

    expect(page.locator("#alert-status")).to_have_text("完了", timeout=30_000)
    expect(page.locator("#figure-sent")).to_have_text("2")
    expect(page.locator("#figure-failed")).to_have_text("0")
    expect(page.locator("#checkin-none")).to_have_text("2")
    for address in users:
        shown = fake_line.delivered(address)
        assert len(shown) == (1 if users[address][1] == "宮古市" else 0)

    helped = next(address for address, (language, _) in users.items() if language == "ne")
    buttons = [item["action"] for item in fake_line.delivered(helped)[-1]["quickReply"]["items"]]
    body = webhook_body(line_event("postback", helped, fake_line.issue_reply_token(helped),
                                   postback={"data": buttons[1]["data"]}))
    response = httpx.post(f"{console.url}/webhooks/line", content=body, timeout=10,
                          headers={"content-type": "application/json", "x-line-signature": fake_line.sign(body)})
    assert response.status_code == 200
    expect(page.locator("#checkin-help")).to_have_text("1", timeout=20_000)  # the page polls; no reload
    expect(page.locator("#checkin-none")).to_have_text("1")

    page.get_by_role("link", name="支援が必要な人の相談（緊急）を受付一覧で見る").click()
    expect(page.locator("table.queue tbody tr")).to_have_count(1)
    expect(page.locator("table.queue tbody tr").first).to_contain_text("安否確認: 支援が必要")
