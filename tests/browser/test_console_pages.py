"""Console pages in the browser: canned replies inserted into the reply box, a preview without a model."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in

EMERGENCY = "My friend collapsed and is not breathing"


def test_canned_reply_goes_into_the_reply_box_and_english_has_no_model(
    page: Page, serve: Callable[..., Console], database_url: str, dead_engine_url: str
) -> None:
    console = serve(database_url, dead_engine_url)
    answer = httpx.post(f"{console.url}/webhooks/rest/webhook", json={"sender": "u-en", "message": EMERGENCY},
                        timeout=30)
    assert answer.status_code == 200
    console.add_staff("admin", role="admin", name="管理者A")
    log_in(page, console, "admin")
    page.get_by_role("link", name="定型文").click()
    form = page.locator("form[action='/console/canned']")
    form.get_by_label("題名").fill("折り返し")
    form.get_by_label("本文（日本語）").fill("明日の午前中にお電話します。")
    form.get_by_role("button", name="追加").click()
    expect(page.get_by_role("status")).to_have_text("定型文を保存しました。")

    page.get_by_role("link", name="受付一覧").click()
    page.locator("table.queue tbody tr").first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(r"/console/cases/\d+$"))
    expect(page.locator("tr.in td.original").first).to_have_text(EMERGENCY)
    page.locator("#text_ja").fill("こんにちは。")
    page.get_by_role("button", name="折り返し").click()
    expect(page.locator("#text_ja")).to_have_value("こんにちは。\n明日の午前中にお電話します。")
    page.get_by_role("button", name="翻訳をプレビュー").click()
    expect(page.locator("#no-translation")).to_contain_text("翻訳")
    expect(page.locator("#translation")).to_have_count(0)
    expect(page.locator("#text_ja")).to_have_value("こんにちは。\n明日の午前中にお電話します。")
    page.get_by_role("button", name="送信").click()
    expect(page.get_by_role("status").first).to_have_text("返信を送信しました。")
    expect(page.locator("tr.out td.original", has_text="明日の午前中にお電話します。")).not_to_have_count(0)
    page.get_by_role("button", name="解決済みにする").click()
    expect(page.get_by_role("status").first).to_have_text("解決済みにしました。")
    expect(page.locator("h1 .tag.resolved")).to_have_text("解決済み")
