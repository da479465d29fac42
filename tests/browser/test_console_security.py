"""The console's defences as a browser meets them: wrong password, lockout, CSRF, roles, escaping."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, Console, log_in

EMERGENCY_WITH_HTML = 'My friend collapsed and is not breathing <script>window.pwned = 1</script><b>bold</b>'


@pytest.fixture
def console(serve: Callable[..., Console], database_url: str, dead_engine_url: str) -> Console:
    return serve(database_url, dead_engine_url)


def test_wrong_password_shows_why_and_stays_on_the_login_page(page: Page, console: Console) -> None:
    console.add_staff("tanaka", role="admin")
    log_in(page, console, "tanaka", "not the password at all")
    expect(page.get_by_role("alert")).to_have_text("ログインIDまたはパスワードが違います。")
    expect(page).to_have_url(re.compile(r"/console/login"))
    expect(page.get_by_label("ログインID")).to_have_value("tanaka")
    page.goto(f"{console.url}/console/queue")
    expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Fqueue"))


def test_five_failures_lock_the_account_even_for_the_right_password(page: Page, console: Console) -> None:
    console.add_staff("sato", role="staff")
    for _ in range(4):
        log_in(page, console, "sato", "wrong password 123")
        expect(page.get_by_role("alert")).to_have_text("ログインIDまたはパスワードが違います。")
    log_in(page, console, "sato", "wrong password 123")
    expect(page.get_by_role("alert")).to_contain_text("ロックされています")
    log_in(page, console, "sato", PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("ロックされています")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_form_posted_without_its_csrf_token_is_refused_with_the_reason(page: Page, console: Console) -> None:
    console.add_staff("suzuki", role="admin", name="鈴木")
    log_in(page, console, "suzuki")
    expect(page.get_by_role("heading", name=re.compile("受付一覧"))).to_be_visible()
    page.goto(f"{console.url}/console/canned")
    form = page.locator("form[action='/console/canned']")
    form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    form.get_by_label("題名").fill("挨拶")
    form.get_by_label("本文（日本語）").fill("お問い合わせありがとうございます。")
    form.get_by_role("button", name="追加").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRFトークンがありません")
    page.goto(f"{console.url}/console/canned")
    expect(page.get_by_text("定型文はまだありません。")).to_be_visible()
    # a wrong token is refused too
    form = page.locator("form[action='/console/canned']")
    form.locator("input[name=csrf_token]").evaluate("input => { input.value = 'forged' }")
    form.get_by_label("題名").fill("挨拶")
    form.get_by_label("本文（日本語）").fill("お問い合わせありがとうございます。")
    form.get_by_role("button", name="追加").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRFトークンが正しくありません")


def test_staff_cannot_open_admin_pages(page: Page, console: Console) -> None:
    console.add_staff("ito", role="staff", name="伊藤")
    log_in(page, console, "ito")
    expect(page.get_by_text("伊藤（職員）")).to_be_visible()
    expect(page.get_by_role("link", name="操作ログ")).to_have_count(0)
    for path in ("/console/audit", "/console/suggestions", "/console/staff"):
        response = page.goto(f"{console.url}{path}")
        assert response is not None and response.status == 403, path
        expect(page.get_by_role("alert")).to_have_text("このページは管理者だけが使えます。")


def test_html_a_user_wrote_is_shown_as_text_in_the_case(page: Page, console: Console) -> None:
    answer = httpx.post(f"{console.url}/webhooks/rest/webhook",
                        json={"sender": "u-html", "message": EMERGENCY_WITH_HTML}, timeout=30)
    assert answer.status_code == 200
    console.add_staff("kato", role="admin")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, console, "kato")
    row = page.locator("table.queue tbody tr").first
    expect(row).to_contain_text("緊急")
    row.get_by_role("link").first.click()
    original = page.locator("tr.in td.original").first
    expect(original).to_have_text(EMERGENCY_WITH_HTML)
    assert page.locator("td.original b").count() == 0
    assert page.evaluate("() => window.pwned") is None
    assert dialogs == []
