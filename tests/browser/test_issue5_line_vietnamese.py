"""Issue 5, done when: a LINE user writes in Vietnamese, staff answer in Japanese in a real browser.

Everything is real: the trained Rasa model, the app served by uvicorn, line-bot-sdk against the fake
LINE API, argostranslate with the packages the tests build from ``tests/data/phrases.yml``, and
Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from bot.db.models import Escalation
from bot.knowledge import KnowledgeBase
from bot.translation import Translator
from tests.browser.conftest import Console, log_in
from tests.conftest import EngineProcess, line_settings, wait_until
from tests.fakes import FakeLine, line_event, text_event, webhook_body

pytestmark = pytest.mark.engine

ASKS_FOR_STAFF = "Tôi muốn nói chuyện với nhân viên."
QUESTION = "Tôi có câu hỏi về việc gia hạn thẻ cư trú."
QUESTION_JA = "在留カードの更新について質問があります。"
REPLY_JA = "明日の午前中にお電話します。"
REPLY_VI = "Chúng tôi sẽ gọi cho bạn vào sáng mai."
KB_QUESTION = "Tôi bị mất thẻ cư trú, phải làm sao?"


class LineUser:
    """A LINE user talking to the live app: signed webhooks in, what LINE showed them out."""

    def __init__(self, url: str, fake: FakeLine, user_id: str = "U5f0c7e1d2b3a4c5d6e7f8091a2b3c4d5") -> None:
        self.url = url
        self.fake = fake
        self.user_id = user_id

    def send(self, event: dict[str, Any]) -> None:
        body = webhook_body(event)
        response = httpx.post(f"{self.url}/webhooks/line", content=body, timeout=30,
                              headers={"content-type": "application/json", "x-line-signature": self.fake.sign(body)})
        assert response.status_code == 200, response.text

    def say(self, text: str) -> None:
        self.send(text_event(self.user_id, self.fake.issue_reply_token(self.user_id), text))

    def press_staff_button(self) -> None:
        """The rich menu's "talk to staff" area (a postback)."""
        self.send(line_event("postback", self.user_id, self.fake.issue_reply_token(self.user_id),
                             postback={"data": "consult:staff"}))

    def texts(self) -> list[str]:
        return [m.get("text", "") for m in self.fake.delivered(self.user_id)]

    def wait_for(self, predicate: Callable[[str], bool], after: int = 0, timeout: float = 60) -> str:
        def found() -> str | None:
            return next((text for text in self.texts()[after:] if predicate(text)), None)

        return str(wait_until(found, timeout=timeout))


def cases(console: Console) -> list[Escalation]:
    with console.assistant.sessions() as session:
        return list(session.scalars(select(Escalation).order_by(Escalation.id)))


def test_staff_answer_a_vietnamese_line_user_in_japanese_in_the_browser(
    page: Page, serve: Callable[..., Console], database_url: str, running_engine: EngineProcess,
    fake_line: FakeLine, translator: Translator, kb: KnowledgeBase,
) -> None:
    console = serve(database_url, running_engine.url, translation_dir=translator.home, **line_settings(fake_line))
    console.add_staff("admin", role="admin", name="山田")
    user = LineUser(console.url, fake_line)

    user.say(ASKS_FOR_STAFF)
    handoff = kb.message("handoff_created", "vi", when="").split("\n")[0].strip()
    user.wait_for(lambda text: handoff in text)
    (case,) = wait_until(lambda: cases(console), timeout=30)
    assert (case.platform, case.language, case.reason) == ("line", "vi", "requested")

    shown = len(user.texts())
    user.say(QUESTION)

    log_in(page, console, "admin")
    expect(page.get_by_role("heading", name=re.compile("受付一覧"))).to_be_visible()
    row = page.locator("table.queue tbody tr", has=page.locator(f'a[href="/console/cases/{case.id}"]'))
    expect(row).to_contain_text("vi")
    expect(row).to_contain_text("line")
    row.locator(f'a[href="/console/cases/{case.id}"]').first.click()
    expect(page).to_have_url(re.compile(rf"/console/cases/{case.id}$"))

    question_row = page.locator("table.transcript tr.in", has_text=QUESTION).last

    def translated() -> bool:
        page.reload()
        return bool(question_row.locator("td.japanese").inner_text().startswith(QUESTION_JA))

    wait_until(translated, timeout=60, interval=1)
    expect(question_row.locator("td.original")).to_have_text(QUESTION)
    expect(question_row.locator("td.japanese")).to_contain_text(QUESTION_JA)

    page.locator("#text_ja").fill(REPLY_JA)
    page.get_by_role("button", name="翻訳をプレビュー").click()
    translation = page.locator("#translation")
    expect(translation).to_have_value(REPLY_VI)
    expect(translation).to_be_editable()
    expect(page.locator("#text_ja")).to_have_value(REPLY_JA)
    page.get_by_role("button", name="送信").click()
    expect(page.get_by_role("status").first).to_have_text("返信を送信しました。")

    note = kb.message("staff_reply_translated", "vi")
    user.wait_for(lambda text: text == REPLY_VI, after=shown)
    user.wait_for(lambda text: note in text and REPLY_JA in text, after=shown)
    pushes = [c for c in fake_line.calls_to("/v2/bot/message/push") if c.body.get("to") == user.user_id]
    assert any(m["text"] == REPLY_VI for call in pushes for m in call.body["messages"]), "sent by push"
    expect(page.locator("table.transcript tr.out", has_text=REPLY_VI)).to_have_count(1)

    shown = len(user.texts())
    page.get_by_role("button", name="アシスタントに戻す").click()
    expect(page.get_by_role("status").first).to_have_text("アシスタントに戻しました。")
    user.wait_for(lambda text: text == kb.message("handed_back", "vi"), after=shown)

    shown = len(user.texts())
    user.say(KB_QUESTION)
    answer = kb.answer("lost_residence_card", "vi")
    user.wait_for(lambda text: text.startswith(answer), after=shown)
    assert [c.status for c in cases(console)] == ["resolved"]
