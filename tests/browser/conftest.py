"""Real Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, against the app served by uvicorn.

Never ``playwright install``: the browser is the system's (the Makefile's test setup installs it
with apt when it is missing). The browser resolves no host but 127.0.0.1, so nothing leaves the
machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from bot import staff as staff_accounts
from bot.settings import Settings
from bot.web.app import create_app
from tests.conftest import LiveServer

CHROMIUM = os.environ.get("CONSULT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Per module: Playwright's sync API keeps an event loop running in this thread until it stops, and
    later tests that call ``asyncio.run`` must not find one."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page, in Japanese like the staff's machines."""
    context = browser.new_context(locale="ja-JP", timezone_id="Asia/Tokyo")
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


class Console:
    """The app served for real, with helpers to create staff accounts in its database."""

    def __init__(self, server: LiveServer, app: Any) -> None:
        self.server = server
        self.app = app
        self.url = server.url

    @property
    def assistant(self) -> Any:
        return self.app.state.assistant

    def add_staff(self, login: str, role: str = "staff", password: str = PASSWORD, name: str = "") -> int:
        with self.assistant.sessions() as session:
            member = staff_accounts.create_staff(session, login, password, display_name=name or login, role=role)
            session.commit()
        return member.id


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Console]]:
    """``serve(database_url, rasa_url, **settings)``: the app on a real port until the test ends.

    Depends on ``database_url`` so that the server stops before its database is dropped.
    """
    stack = contextlib.ExitStack()

    def factory(database_url: str, rasa_url: str, **overrides: Any) -> Console:
        settings = Settings(data_dir=tmp_path / "live", database_url=database_url, rasa_url=rasa_url,
                            retry_interval=0.2, rasa_timeout=30.0, **overrides)
        app = create_app(settings)
        return Console(stack.enter_context(LiveServer(app)), app)

    yield factory
    stack.close()


def log_in(page: Page, console: Console, login: str, password: str = PASSWORD) -> None:
    page.goto(f"{console.url}/console/login")
    page.get_by_label("ログインID").fill(login)
    page.get_by_label("パスワード").fill(password)
    page.get_by_role("button", name="ログイン").click()
