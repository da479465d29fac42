"""The help desk without the engine: cases, staff silence, staff replies at the fake LINE server, the queue.

Rasa is stopped here (a dead address): everything tested is decided before or instead of the
engine. The engine-backed paths (two failures, thumbs-down on a real answer, the assistant answering
after a hand-back) are in ``test_helpdesk_engine.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bot.db.models import AuditEntry, Conversation, Escalation, Identity, Message
from bot.helpdesk import Forbidden, HelpDesk, HelpDeskError, QueueFilter
from bot.knowledge import KnowledgeBase
from bot.pipeline import Assistant, feedback_payload
from bot.ports import Inbound
from bot.staff import StaffMember, create_staff
from tests.conftest import line_settings, telegram_settings, wait_until
from tests.fakes import FakeLine, FakeTelegram, text_event, webhook_body

JST = ZoneInfo("Asia/Tokyo")
PASSWORD = "correct horse battery staple"
REPLY_JA = "在留カードの再交付は、14日以内に入管で申請してください。"


class Desk:
    """The running app's help desk, called the way the console calls it (on the app's event loop)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.helpdesk: HelpDesk = client.app.state.helpdesk  # type: ignore[attr-defined]
        self.assistant: Assistant = client.app.state.assistant  # type: ignore[attr-defined]

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.client.portal.call(function, *args)  # type: ignore[union-attr]

    def staff(self, login: str, role: str = "staff") -> StaffMember:
        with self.assistant.sessions() as session:
            member = create_staff(session, login, PASSWORD, display_name=login.title(), role=role)
            session.commit()
            return member

    def rows(self, model: type, *where: object) -> list[Any]:
        with self.assistant.sessions() as session:
            return list(session.scalars(select(model).where(*where)))


class LineUser:
    def __init__(self, client: TestClient, fake: FakeLine) -> None:
        self.client, self.fake = client, fake
        self.user_id = f"U{uuid.uuid4().hex}"

    def say(self, text: str) -> None:
        body = webhook_body(text_event(self.user_id, self.fake.issue_reply_token(self.user_id), text))
        response = self.client.post("/webhooks/line", content=body, headers={
            "content-type": "application/json", "x-line-signature": self.fake.sign(body)})
        assert response.status_code == 200, response.text

    def texts(self) -> list[str]:
        return [m["text"] for m in self.fake.delivered(self.user_id)]


@pytest.fixture
def client(database_url: str, fake_line: FakeLine, make_client: Callable[..., TestClient], dead_engine_url: str,
           tmp_path: Path) -> TestClient:
    return make_client(database_url, dead_engine_url, **line_settings(fake_line), kb_drafts_dir=tmp_path / "drafts")


@pytest.fixture
def desk(client: TestClient) -> Desk:
    return Desk(client)


def conversation_of(desk: Desk, platform_user_id: str) -> Conversation:
    with desk.assistant.sessions() as session:
        conversation = session.scalar(
            select(Conversation).join(Identity, Identity.id == Conversation.identity_id)
            .where(Identity.platform_user_id == platform_user_id)
        )
        assert conversation is not None
        return conversation


def test_staff_take_over_reply_without_a_model_and_hand_back(
    desk: Desk, client: TestClient, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    user = LineUser(client, fake_line)
    user.say("Tôi bị mất thẻ cư trú, tôi phải làm gì bây giờ?")
    wait_until(lambda: user.texts() == [kb.message("please_wait", "vi")], timeout=20)

    staff = desk.staff("tanaka")
    conversation = conversation_of(desk, user.user_id)
    case_id = desk.helpdesk.take_over(conversation.id, staff)
    (case,) = desk.rows(Escalation, Escalation.id == case_id)
    assert (case.status, case.reason, case.assignee_id, case.language) == ("assigned", "staff", staff.id, "vi")
    assert conversation_of(desk, user.user_id).handler == "staff"

    user.say("Xin chào, bạn có ở đó không?")
    user.say("Tôi cần giúp đỡ gấp về thẻ cư trú.")
    wait_until(lambda: len(desk.rows(Message, Message.conversation_id == conversation.id, Message.direction == "in",
                                     Message.status == "staff")) == 3, timeout=20)
    wait_until(lambda: kb.message("staff_handling", "vi") in user.texts(), timeout=10)
    assert user.texts().count(kb.message("staff_handling", "vi")) == 1, "told once, not on every message"
    assert user.texts().count(kb.message("please_wait", "vi")) == 1, "the assistant stays silent"

    # no translation model is installed here: staff see a clear notice, the user gets Japanese with a note
    wait_until(lambda: not desk.rows(Message, Message.translation_status == "pending"), timeout=20)
    view = desk.helpdesk.case(case_id)
    said = [line for line in view.transcript if line.author == "user"]
    assert [line.text for line in said][-2:] == ["Xin chào, bạn có ở đó không?", "Tôi cần giúp đỡ gấp về thẻ cư trú."]
    assert {line.translation_status for line in said} == {"unavailable"}
    assert (view.platform, view.language, view.handler, view.can_translate_reply) == ("line", "vi", "staff", False)
    preview = desk.run(desk.helpdesk.preview, case_id, REPLY_JA)
    assert preview.translation is None and "翻訳モデルがありません" in (preview.notice_ja or "")

    pushes_before = len(fake_line.calls_to("/v2/bot/message/push"))
    result = desk.run(desk.helpdesk.reply, case_id, staff, REPLY_JA)
    assert result.delivered and not result.translated
    expected = kb.message("staff_reply_untranslated", "vi") + "\n\n" + REPLY_JA
    assert user.texts()[-1] == expected
    assert len(fake_line.calls_to("/v2/bot/message/push")) == pushes_before + 1
    (case,) = desk.rows(Escalation, Escalation.id == case_id)
    assert case.status == "waiting"

    user.say("Cảm ơn bạn nhiều.")
    wait_until(lambda: desk.rows(Escalation, Escalation.id == case_id)[0].status == "open", timeout=20)
    assert user.texts()[-1] == expected, "no second notice after staff have replied"

    desk.run(desk.helpdesk.hand_back, case_id, staff)
    assert user.texts()[-1] == kb.message("handed_back", "vi")
    (case,) = desk.rows(Escalation, Escalation.id == case_id)
    assert case.status == "resolved" and case.resolved_at is not None
    assert conversation_of(desk, user.user_id).handler == "bot"
    actions = [row.action for row in desk.rows(AuditEntry, AuditEntry.staff_id == staff.id)]
    assert actions == ["take_over", "reply", "hand_back"]

    user.say("Xin chào")  # the assistant is back: the engine is stopped, so it says it will answer later
    wait_until(lambda: user.texts()[-1] == kb.message("please_wait", "vi"), timeout=20)


def test_the_safety_net_still_answers_while_staff_hold_the_conversation(
    desk: Desk, client: TestClient, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    user = LineUser(client, fake_line)
    user.say("Hello, I need some help")
    wait_until(lambda: user.texts() == [kb.message("please_wait", "en")], timeout=20)
    case_id = desk.helpdesk.take_over(conversation_of(desk, user.user_id).id, desk.staff("sato"))
    user.say("My friend collapsed and is not breathing")
    wait_until(lambda: kb.message("emergency_medical", "en") in user.texts(), timeout=20)
    (case,) = desk.rows(Escalation)
    assert (case.id, case.urgent) == (case_id, True), "the same case, now urgent"


def handle(desk: Desk, inbound: Inbound) -> list[str]:
    outcome = desk.run(desk.assistant.handle, inbound)
    return [reply.text for reply in outcome.replies]


@pytest.mark.parametrize(
    ("now", "language", "next_open"),
    [
        (dt.datetime(2026, 12, 5, 23, 0, tzinfo=JST), "vi", "Thứ Hai 12/7 9:00"),  # Saturday night
        (dt.datetime(2026, 11, 22, 2, 0, tzinfo=JST), "en", "Tuesday 11/24 9:00"),  # before a public holiday
        (dt.datetime(2026, 12, 7, 10, 0, tzinfo=JST), "pt", None),  # Monday morning: staff at work
    ],
)
def test_a_hand_off_says_when_staff_will_reply(
    desk: Desk, kb: KnowledgeBase, now: dt.datetime, language: str, next_open: str | None
) -> None:
    desk.assistant.clock = lambda: now
    texts = handle(desk, Inbound("rest", f"u-{uuid.uuid4().hex[:6]}", "", kind="staff", language_hint=language))
    when = (kb.message("handoff_when_open", language) if next_open is None
            else kb.message("handoff_when_closed", language, next_open=next_open))
    assert texts == [kb.message("handoff_created", language, when=when)]
    (case,) = desk.rows(Escalation)
    assert (case.reason, case.night, case.status) == ("requested", next_open is not None, "open")


def test_thumbs_down_opens_a_case_and_thumbs_up_thanks(desk: Desk, kb: KnowledgeBase) -> None:
    desk.assistant.clock = lambda: dt.datetime(2026, 12, 7, 10, 0, tzinfo=JST)
    up = handle(desk, Inbound("rest", "liker", feedback_payload("lost_residence_card", True), language_hint="en"))
    assert up == [kb.message("feedback_thanks", "en")]
    assert desk.rows(Escalation) == []
    down = handle(desk, Inbound("rest", "critic", feedback_payload("lost_residence_card", False), language_hint="es"))
    assert down == [kb.message("handoff_created", "es", when=kb.message("handoff_when_open", "es"))]
    (case,) = desk.rows(Escalation)
    entry = kb.entries["lost_residence_card"]
    assert (case.reason, case.topic, case.category, case.language) == ("feedback", entry.topic, entry.category, "es")
    again = handle(desk, Inbound("rest", "critic", feedback_payload("lost_residence_card", False)))
    assert len(again) == 1 and len(desk.rows(Escalation)) == 1, "one open case per conversation"
    broken = handle(desk, Inbound("rest", "critic", "/feedback{not json"))
    assert len(broken) == 1, "a broken payload still gets a polite answer"


def test_the_queue_puts_urgent_then_night_cases_first_then_the_oldest(desk: Desk, kb: KnowledgeBase) -> None:
    day = dt.datetime(2026, 12, 7, 10, 0, tzinfo=JST)
    night = dt.datetime(2026, 12, 5, 23, 0, tzinfo=JST)
    opened: dict[str, int] = {}
    for name, clock, inbound in [
        ("old_day", day, Inbound("rest", "a", "", kind="staff", language_hint="en")),
        ("night", night, Inbound("rest", "b", "", kind="staff", language_hint="vi")),
        ("new_day", day, Inbound("rest", "c", "", kind="staff", language_hint="en")),
        ("urgent", day, Inbound("rest", "d", "Tôi bị ngã và chảy máu rất nhiều, không thở được")),
    ]:
        desk.assistant.clock = lambda clock=clock: clock  # type: ignore[misc]
        handle(desk, inbound)
        opened[name] = max(row.id for row in desk.rows(Escalation))
    base = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with desk.assistant.sessions() as session:
        for hours, name in enumerate(["old_day", "night", "new_day", "urgent"]):
            session.execute(update(Escalation).where(Escalation.id == opened[name])
                            .values(created_at=base + dt.timedelta(hours=hours)))
        session.commit()
    handle(desk, Inbound("rest", "a", "Hello, I still need help with my visa"))

    page = desk.helpdesk.queue()
    assert [row.id for row in page.rows] == [opened[n] for n in ("urgent", "night", "old_day", "new_day")]
    assert page.total == 4 and page.rows[0].urgent and page.rows[1].night
    by_id = {row.id: row for row in page.rows}
    assert by_id[opened["old_day"]].summary_ja == "Hello, I still need help with my visa", "untranslated: the original"
    assert by_id[opened["old_day"]].unanswered == 1 and by_id[opened["old_day"]].message_count >= 3
    assert [r.id for r in desk.helpdesk.queue(QueueFilter(language="vi")).rows] == [opened["urgent"], opened["night"]]
    assert [r.id for r in desk.helpdesk.queue(QueueFilter(urgent=True)).rows] == [opened["urgent"]]
    assert desk.helpdesk.queue(QueueFilter(status=("resolved",))).total == 0
    two = desk.helpdesk.queue(page=2, per_page=3)
    assert [r.id for r in two.rows] == [opened["new_day"]] and two.pages == 2
    older = desk.helpdesk.queue(QueueFilter(older_than=dt.timedelta(days=3650)))
    assert older.total == 0


def test_canned_replies_and_knowledge_base_proposals(desk: Desk, tmp_path: Path) -> None:
    staff, admin = desk.staff("ito"), desk.staff("chief", role="admin")
    canned = desk.helpdesk.create_canned(staff, "再交付", REPLY_JA)
    desk.helpdesk.update_canned(staff, canned, "在留カード再交付", REPLY_JA)
    assert [(c.title, c.text_ja) for c in desk.helpdesk.canned_replies()] == [("在留カード再交付", REPLY_JA)]
    with pytest.raises(HelpDeskError):
        desk.helpdesk.create_canned(staff, " ", "")
    desk.helpdesk.delete_canned(staff, canned)
    assert desk.helpdesk.canned_replies() == []

    handle(desk, Inbound("rest", "asker", "", kind="staff", language_hint="en"))
    (case,) = desk.rows(Escalation)
    proposal = desk.helpdesk.propose_entry(case.id, staff, "在留カードをなくしたらどうする?", REPLY_JA)
    rejected = desk.helpdesk.propose_entry(None, staff, "質問", "回答")
    with pytest.raises(Forbidden):
        desk.run(desk.helpdesk.accept_suggestion, proposal, staff)
    desk.helpdesk.reject_suggestion(rejected, admin)
    path = desk.run(desk.helpdesk.accept_suggestion, proposal, admin)
    assert path.parent == tmp_path / "drafts"
    draft = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert draft["answers"]["ja"].strip() == REPLY_JA
    assert draft["questions"]["ja"] == ["在留カードをなくしたらどうする?"]
    assert draft["draft"]["suggestion"] == proposal and "vi" in draft["draft"]["missing"]
    assert [s.status for s in desk.helpdesk.suggestions(None)] == ["rejected", "accepted"]
    with pytest.raises(HelpDeskError):
        desk.run(desk.helpdesk.accept_suggestion, proposal, admin)
    actions = [(row.action, row.staff_id) for row in desk.rows(AuditEntry)]
    assert actions == [
        ("canned_create", staff.id), ("canned_update", staff.id), ("canned_delete", staff.id),
        ("kb_propose", staff.id), ("kb_propose", staff.id), ("kb_reject", admin.id), ("kb_accept", admin.id),
    ]
    assert next(a.action for a in desk.helpdesk.audit_log()) == "kb_accept"


def test_a_telegram_user_asks_for_staff_and_gets_the_reply(
    database_url: str, fake_telegram: FakeTelegram, make_client: Callable[..., TestClient], dead_engine_url: str,
    kb: KnowledgeBase,
) -> None:
    from tests.test_telegram import TelegramUser

    client = make_client(database_url, dead_engine_url, **telegram_settings(fake_telegram))
    desk = Desk(client)
    desk.assistant.clock = lambda: dt.datetime(2026, 12, 5, 23, 0, tzinfo=JST)  # Saturday night
    user = TelegramUser(client, fake_telegram, "pt-br")
    user.say("/staff")
    when = kb.message("handoff_when_closed", "pt", next_open="segunda-feira 12/7 9:00")
    wait_until(lambda: user.texts() == [kb.message("handoff_created", "pt", when=when)], timeout=20)
    (case,) = desk.rows(Escalation)
    assert (case.reason, case.night, case.platform, case.language) == ("requested", True, "telegram", "pt")

    staff = desk.staff("kimura")
    desk.helpdesk.assign(case.id, staff)
    user.say("Olá, alguém pode me ajudar?")
    wait_until(lambda: user.texts()[-1:] == [kb.message("staff_handling", "pt")], timeout=20)
    desk.run(desk.helpdesk.reply, case.id, staff, REPLY_JA)
    assert user.texts()[-1] == kb.message("staff_reply_untranslated", "pt") + "\n\n" + REPLY_JA
    desk.run(desk.helpdesk.resolve, case.id, staff)
    assert user.texts()[-1] == kb.message("handed_back", "pt")
    assert [row.action for row in desk.rows(AuditEntry)] == ["assign", "reply", "resolve"]
