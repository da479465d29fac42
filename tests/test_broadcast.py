"""Disaster alerts: targeting, every language, exactly-once delivery at the fake LINE and Telegram
servers under injected 429/500 and worker restarts, blocked users, LINE's quota, the safety
check-in through the real webhooks, and disaster mode. Each on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.alerts import check_alerts, load_alerts
from bot.broadcast import (
    AlertError,
    AlertRefused,
    BroadcastSender,
    BroadcastService,
    BroadcastWorker,
    is_disaster_mode,
    set_disaster_mode,
)
from bot.checkin import checkin_counts
from bot.db import make_engine, sessions, upgrade
from bot.db.models import Broadcast, BroadcastDelivery, Escalation, Identity, User
from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES
from bot.settings import Settings
from connectors.broadcast import broadcasters
from tests.conftest import line_settings, telegram_settings, wait_until
from tests.fakes import FakeLine, FakeTelegram, line_event, telegram_callback_update, webhook_body

FIELDS = {
    "earthquake": {"area": "宮古市", "time": "14:46"},
    "tsunami_warning": {"area": "宮古市", "time": "14:49"},
    "rain_level3": {"area": "岩泉町", "time": "10:00"},
    "rain_level4": {"area": "岩泉町", "time": "12:00"},
    "rain_level5": {"area": "岩泉町", "time": "15:00"},
    "shelter_opened": {"area": "盛岡市", "name": "盛岡市立仁王小学校", "address": "盛岡市本町通3-13-1",
                       "map_url": "https://maps.example.jp/shelter/1"},
    "distribution": {"area": "盛岡市", "place": "盛岡市役所 前", "time": "18:00"},
    "all_clear": {"area": "宮古市", "time": "09:00"},
    "checkin": {"area": "宮古市"},
}
OFFICIAL = {"rain_level3": "高齢者等避難", "rain_level4": "避難指示", "rain_level5": "緊急安全確保",
            "tsunami_warning": "津波"}


@dataclass
class World:
    kb: KnowledgeBase
    sessions: sessionmaker[Session]
    line: FakeLine
    telegram: FakeTelegram
    settings: Settings

    def senders(self) -> dict[str, BroadcastSender]:
        return broadcasters(self.settings)

    def service(self, senders: dict[str, BroadcastSender], **kw: Any) -> BroadcastService:
        return BroadcastService(self.kb, self.sessions, senders, **kw)

    def worker(self, senders: dict[str, BroadcastSender], **kw: Any) -> BroadcastWorker:
        return BroadcastWorker(self.kb, self.sessions, senders, idle=0.1, **kw)

    def user(self, platform: str, address: str, language: str | None = "en", area: str | None = None,
             unsubscribed: bool = False) -> int:
        with self.sessions() as session:
            user = User(language=language, area=area)
            session.add(user)
            session.flush()
            session.add(Identity(user_id=user.id, platform=platform, platform_user_id=address,
                                 unsubscribed=unsubscribed))
            session.commit()
            return user.id


@pytest.fixture
def world(database_url: str, kb: KnowledgeBase, fake_line: FakeLine, fake_telegram: FakeTelegram,
          tmp_path: Any) -> Iterator[World]:
    upgrade(database_url)
    engine = make_engine(database_url)
    settings = Settings(data_dir=tmp_path, database_url=database_url, **line_settings(fake_line),
                        **telegram_settings(fake_telegram))
    yield World(kb, sessions(engine), fake_line, fake_telegram, settings)
    engine.dispose()


async def _closing(senders: dict[str, BroadcastSender], work: Any) -> Any:
    try:
        return await work
    finally:
        for sender in senders.values():
            await sender.close()


def run(senders: dict[str, BroadcastSender], work: Any) -> Any:
    return asyncio.run(_closing(senders, work))


# ---------------------------------------------------------------------------- content


def test_every_template_reads_in_every_language_with_its_fields(world: World) -> None:
    templates = load_alerts(world.kb.root)
    assert set(templates) == set(FIELDS)
    assert check_alerts(templates, world.kb) == []
    service = world.service({})
    for name, fields in FIELDS.items():
        texts = asyncio.run(service.preview(name, fields))
        assert set(texts) == set(LANGUAGES)
        for language, text in texts.items():
            assert "{" not in text, (name, language)
            for value in fields.values():
                assert value in text, (name, language, value)
            if name in OFFICIAL:
                assert OFFICIAL[name] in text, (name, language)
            if name.startswith("rain_level"):
                assert name[-1] in text
    checkin = asyncio.run(service.preview("checkin", FIELDS["checkin"]))
    for language, text in checkin.items():  # the text names the button the reader will see
        assert world.kb.message("checkin_button_help", language) in text, language
    easy = asyncio.run(service.preview("rain_level4", FIELDS["rain_level4"]))["ja-easy"]
    assert "避難指示(ひなんしじ)" in easy and "ください" in easy


def test_the_check_finds_a_missing_language_and_a_placeholder_that_differs(world: World) -> None:
    templates = load_alerts(world.kb.root)
    quake = templates["earthquake"]
    broken = dict(quake.texts)
    del broken["ne"]
    broken["vi"] = broken["vi"].replace("{area}", "{place}")
    templates["earthquake"] = dataclasses.replace(quake, texts=broken)
    problems = check_alerts(templates, world.kb)
    assert "alerts.yml: earthquake has no text in ne" in problems
    assert any("earthquake in vi has placeholders" in p for p in problems)


def test_bad_requests_get_a_reason(world: World) -> None:
    service = world.service(world.senders())
    with pytest.raises(AlertError, match="needs the fields: time"):
        asyncio.run(service.create_alert("earthquake", {"area": "宮古市"}))
    with pytest.raises(AlertError, match="unknown template"):
        asyncio.run(service.create_alert("meteor", {}))
    with pytest.raises(AlertError, match="no platform to send on"):
        asyncio.run(world.service({}).create_alert("checkin", {"area": "x"}))
    with pytest.raises(AlertError, match="no sender for platform fax"):
        asyncio.run(service.create_alert("checkin", {"area": "x"}, platforms=["fax"]))


class Upper:
    """A stand-in for the machine translator (``bot.translation`` lives on another branch)."""

    def can_translate(self, source: str, target: str) -> bool:
        return target == "en"

    async def translate(self, text: str, source: str, target: str) -> Any:
        return type("T", (), {"text": f"EN[{text}]"})()


def test_staff_free_text_is_machine_translated_and_marked_or_sent_in_japanese(world: World) -> None:
    note = "給水車は午後3時に来ます。"
    texts = asyncio.run(world.service({}, translator=Upper()).preview("earthquake", FIELDS["earthquake"], note))
    assert texts["en"].endswith(f"\n\nFrom staff (machine translation from Japanese):\nEN[{note}]")
    assert texts["vi"].endswith(f"\n\n{world.kb.message('alert_note_japanese', 'vi')}\n{note}")
    assert texts["ja-easy"].endswith(f"\n\nスタッフから(日本語(にほんご)です):\n{note}")
    assert texts["ja"].endswith(f"\n\n担当者から:\n{note}")
    plain = asyncio.run(world.service({}).preview("earthquake", FIELDS["earthquake"], note))
    assert plain["en"].endswith(f"\n\nFrom staff (in Japanese, not translated):\n{note}")


# ---------------------------------------------------------------------------- targeting


def test_targeting_by_area_language_and_platform(world: World) -> None:
    a = world.user("line", "Ua", "en", "宮古市")
    b = world.user("telegram", "1002", "vi", "盛岡市")
    c = world.user("telegram", "1003", None, None)
    world.user("line", "Ugone", "en", "宮古市", unsubscribed=True)
    world.user("rest", "web-1", "en", "宮古市")
    service = world.service(world.senders())

    def ids(**kw: Any) -> list[int]:
        return sorted(r.user_id for r in service.recipients(**kw))

    assert ids() == [a, b, c]
    assert ids(areas=["宮古市"]) == [a]
    assert ids(languages=["vi"]) == [b]
    assert ids(languages=["ja-easy"]) == [c]  # language unknown: easy Japanese
    assert ids(platforms=["telegram"]) == [b, c]
    group = world.user("line", "Cgroup1", "en", "宮古市")
    jobs = service._jobs(1, [r for r in service.recipients() if r.platform == "line"])
    assert [(j["user_ids"], j["recipients"]) for j in jobs] == [([a], 1), ([group], 1)]  # a group is never multicast


# ---------------------------------------------------------------------------- delivery


def _people(world: World, line: int, telegram: int) -> tuple[list[str], list[int]]:
    languages = ["en", "vi", "ja-easy", "pt"]
    line_ids = [f"U{uuid.uuid4().hex}" for _ in range(line)]
    chats = [700000 + i for i in range(telegram)]
    for i, address in enumerate(line_ids):
        world.user("line", address, languages[i % 4], "宮古市")
    for i, chat in enumerate(chats):
        world.user("telegram", str(chat), languages[i % 4], "盛岡市")
    return line_ids, chats


def test_exactly_once_under_injected_429_500_and_a_worker_restart(world: World) -> None:
    line_ids, chats = _people(world, 90, 40)
    world.line.chaos(0.3, ("/v2/bot/message/multicast", "/v2/bot/message/push"), seed=1)
    world.line.late_failure_rate = 0.2  # delivered, then the answer is lost: the retry key saves us
    world.telegram.chaos(0.3, ("/sendMessage",), seed=2)
    senders = world.senders()
    senders["line"].batch_size = 10  # type: ignore[misc]
    service = world.service(senders)

    async def scenario() -> bool:
        alert = await service.create_alert("earthquake", FIELDS["earthquake"])
        dead = world.worker(senders, lease=0.5, name="dead")
        dead.claim("line", 2)  # a worker that claimed two batches and died before sending them
        dead.claim("telegram", 3)
        first = world.worker(senders, name="first")
        runner = asyncio.create_task(first.run())
        await asyncio.sleep(1.5)
        first.stop()  # restart mid-send: what is in flight finishes and is recorded
        await runner
        assert world.telegram.received, "the first worker sent something"
        return await world.worker(senders, name="second").drain(alert, timeout=120)

    assert run(senders, scenario())
    assert all(world.line.received[u] == 1 for u in line_ids), world.line.received
    assert all(world.telegram.received[c] == 1 for c in chats)
    assert len(world.line.received) == 90 and len(world.telegram.received) == 40
    assert [c for c in world.line.calls_to("/multicast") if c.status == 409], "a retried batch met its retry key"
    failures = [c.status for c in world.line.calls + world.telegram.calls if c.status in (429, 500)]
    assert 429 in failures and 500 in failures
    with world.sessions() as session:
        alert_id = session.scalar(select(Broadcast.id))
        assert alert_id is not None
    report = service.report(alert_id)
    assert report["status"] == "done"
    assert report["totals"] == {"sent": 130}
    assert report["by_platform"]["telegram"]["vi"] == {"sent": 10}
    shown = world.telegram.delivered(chats[1])[0]["text"]  # the second chat reads Vietnamese
    assert shown.startswith("[Động đất (地震)]")


def test_two_workers_claiming_at_once_never_send_twice(world: World, database_url: str) -> None:
    _people(world, 40, 30)
    senders = world.senders()
    senders["line"].batch_size = 3  # type: ignore[misc]
    service = world.service(senders)
    other_engine = make_engine(database_url)  # a second process's connection pool

    async def scenario() -> list[bool]:
        alert = await service.create_alert("tsunami_warning", FIELDS["tsunami_warning"])
        one = world.worker(senders, name="one")
        two = BroadcastWorker(world.kb, sessions(other_engine), senders, idle=0.1, name="two")
        return list(await asyncio.gather(one.drain(alert, 60), two.drain(alert, 60)))

    try:
        assert run(senders, scenario()) == [True, True]
    finally:
        other_engine.dispose()
    assert sorted(world.line.received.values()) == [1] * 40
    assert sorted(world.telegram.received.values()) == [1] * 30
    keys = [c.headers.get("X-Line-Retry-Key") for c in world.line.calls if c.path.endswith(("/multicast", "/push"))]
    assert len(keys) == len(set(keys)), "no batch was sent by both workers"
    with world.sessions() as session:
        attempts = {row.attempts for row in session.scalars(select(BroadcastDelivery))}
        assert attempts == {1}, "every job was claimed exactly once"


def test_blocked_users_are_recorded_not_retried_and_skipped_next_time(world: World) -> None:
    world.user("line", "Ublocked", "en")
    world.user("telegram", "5001", "en")
    world.user("telegram", "5002", "en")
    world.line.blocked_users.add("Ublocked")
    world.telegram.blocked_chats.add(5002)
    senders = world.senders()
    service = world.service(senders)

    async def scenario() -> tuple[int, int]:
        first = await service.create_alert("all_clear", FIELDS["all_clear"])
        await world.worker(senders).drain(first, 30)
        second = await service.create_alert("all_clear", FIELDS["all_clear"])
        await world.worker(senders).drain(second, 30)
        return first, second

    first, second = run(senders, scenario())
    report = service.report(first)
    assert report["totals"] == {"sent": 1, "blocked": 2}
    reasons = {(f["platform"], f["reason"]) for f in report["failures"]}
    assert reasons == {("line", "LINE 403: the user blocked the account"),
                       ("telegram", "Telegram 403: the user blocked the bot")}
    assert len(world.line.calls_to("/push")) == 1 and len(world.telegram.calls_to("/sendMessage")) == 3
    assert service.report(second)["totals"] == {"sent": 1}
    with world.sessions() as session:
        assert sorted(session.scalars(select(Identity.platform_user_id).where(Identity.unsubscribed))) == [
            "5002", "Ublocked"]


def test_line_quota_is_reported_and_an_alert_that_would_exceed_it_is_refused(world: World) -> None:
    for i in range(6):
        world.user("line", f"Uq{i}", "en")
    world.user("telegram", "6001", "en")
    world.line.quota_limit = 10
    world.line.quota_used = 5
    senders = world.senders()
    service = world.service(senders)

    async def scenario() -> Any:
        quota = await service.line_quota()
        with pytest.raises(AlertRefused) as refused:
            await service.create_alert("checkin", {"area": "宮古市"})
        return quota, refused.value

    quota, refused = run(senders, scenario())
    assert (quota.limit, quota.used, quota.remaining) == (10, 5, 5)
    assert str(refused) == "LINE monthly quota: 5 of 10 messages left, this alert needs 6; nothing was sent"
    assert service.progress(refused.broadcast_id)["status"] == "refused"
    assert not world.line.calls_to("/multicast") and not world.telegram.calls_to("/sendMessage")

    world.line.quota_limit = 20  # the plan was raised: now it goes out, and the report says what it used
    senders = world.senders()
    service = world.service(senders)
    alert = run(senders, service.create_alert("checkin", {"area": "宮古市"}))
    assert service.progress(alert)["detail"] == (
        "LINE monthly quota before sending: 15 of 20 left (5 used); this alert uses 6")


# ---------------------------------------------------------------------------- check-in and disaster mode


@pytest.fixture
def app(database_url: str, fake_line: FakeLine, fake_telegram: FakeTelegram,
        make_client: Callable[..., TestClient], dead_engine_url: str) -> TestClient:
    """The whole app with Rasa stopped: check-in answers and disaster mode never need the engine."""
    return make_client(database_url, dead_engine_url, **line_settings(fake_line), **telegram_settings(fake_telegram))


def _line_post(client: TestClient, fake: FakeLine, event: dict[str, Any]) -> None:
    body = webhook_body(event)
    response = client.post("/webhooks/line", content=body,
                           headers={"content-type": "application/json", "x-line-signature": fake.sign(body)})
    assert response.status_code == 200


def test_checkin_buttons_record_answers_and_need_help_opens_an_urgent_escalation(
    app: TestClient, fake_line: FakeLine, fake_telegram: FakeTelegram, kb: KnowledgeBase
) -> None:
    assistant = app.app.state.assistant  # type: ignore[attr-defined]
    service: BroadcastService = app.app.state.broadcasts  # type: ignore[attr-defined]
    line_user = f"U{uuid.uuid4().hex}"
    fake_line.profiles[line_user] = "en"
    _line_post(app, fake_line, line_event("follow", line_user, fake_line.issue_reply_token(line_user),
                                          follow={"isUnblocked": False}))
    wait_until(lambda: fake_line.delivered(line_user), 10)
    response = app.post("/webhooks/telegram", json={"update_id": 1, "message": {
        "message_id": 1, "date": 0, "chat": {"id": 4242, "type": "private"},
        "from": {"id": 4242, "is_bot": False, "first_name": "T", "language_code": "pt"}, "text": "/start"}},
        headers={"X-Telegram-Bot-Api-Secret-Token": "telegram-test-secret"})
    assert response.status_code == 200
    wait_until(lambda: fake_telegram.delivered(4242), 10)
    with assistant.sessions() as session:
        for user in session.scalars(select(User)):
            user.area = "宮古市"
        session.commit()

    staff_senders = broadcasters(app.app.state.settings)  # type: ignore[attr-defined]
    staff = BroadcastService(kb, assistant.sessions, staff_senders)  # e.g. the CLI, queueing for the app
    alert = run(staff_senders, staff.create_alert("checkin", {"area": "宮古市"}))
    wait_until(lambda: service.progress(alert)["status"] == "done", 20)  # the app's own worker sends it

    shown = fake_line.delivered(line_user)[-1]
    assert shown["text"].startswith("[Safety check-in (安否確認)]")
    actions = [item["action"] for item in shown["quickReply"]["items"]]
    assert [a["label"] for a in actions] == ["I am safe", "I need help"]
    _line_post(app, fake_line, line_event("postback", line_user, fake_line.issue_reply_token(line_user),
                                          postback={"data": actions[1]["data"]}))
    wait_until(lambda: len(fake_line.delivered(line_user)) >= 3, 10)
    assert fake_line.delivered(line_user)[-1]["text"] == kb.message("checkin_recorded_help", "en")

    telegram_alert = fake_telegram.delivered(4242)[-1]
    keys = telegram_alert["reply_markup"]["inline_keyboard"]
    assert [row[0]["text"] for row in keys] == ["Estou bem", "Preciso de ajuda"]
    response = app.post("/webhooks/telegram", json=telegram_callback_update(2, 4242, keys[0][0]["callback_data"],
                                                                            "pt"),
                        headers={"X-Telegram-Bot-Api-Secret-Token": "telegram-test-secret"})
    assert response.status_code == 200
    wait_until(lambda: len(fake_telegram.delivered(4242)) >= 3, 10)
    assert fake_telegram.delivered(4242)[-1]["text"] == kb.message("checkin_recorded_safe", "pt")

    with assistant.sessions() as session:
        escalations = list(session.scalars(select(Escalation)))
    assert [(e.reason, e.urgent, e.platform) for e in escalations] == [("checkin", True, "line")]
    counts = checkin_counts(assistant.sessions, alert)
    assert counts["areas"] == {"宮古市": {"safe": 1, "help": 1}}
    assert (counts["reached"], counts["not_answered"]) == (2, 0)


def test_disaster_mode_points_to_the_disaster_desk(app: TestClient, fake_line: FakeLine, kb: KnowledgeBase) -> None:
    assistant = app.app.state.assistant  # type: ignore[attr-defined]
    user = f"U{uuid.uuid4().hex}"
    assert not is_disaster_mode(assistant.sessions)
    _line_post(app, fake_line, line_event("follow", user, fake_line.issue_reply_token(user),
                                          follow={"isUnblocked": False}))
    wait_until(lambda: fake_line.delivered(user), 10)
    assert len(fake_line.delivered(user)) == 1

    set_disaster_mode(assistant.sessions, True, by="test")
    assert is_disaster_mode(assistant.sessions)
    _line_post(app, fake_line, line_event("postback", user, fake_line.issue_reply_token(user),
                                          postback={"data": "consult:help"}))
    wait_until(lambda: len(fake_line.delivered(user)) >= 3, 10)
    assert fake_line.delivered(user)[-1]["text"] == kb.message("disaster_mode_notice", "en")
    _line_post(app, fake_line, line_event("postback", user, fake_line.issue_reply_token(user),
                                          postback={"data": "consult:staff"}))
    wait_until(lambda: len(fake_line.delivered(user)) >= 4, 10)
    handoff = fake_line.delivered(user)[-1]["text"]
    assert kb.message("handoff_when_disaster", "en") in handoff
    assert "Iwate Multilingual Disaster Support Desk" in handoff

    newcomer = f"U{uuid.uuid4().hex}"
    _line_post(app, fake_line, line_event("follow", newcomer, fake_line.issue_reply_token(newcomer),
                                          follow={"isUnblocked": False}))
    wait_until(lambda: len(fake_line.delivered(newcomer)) >= 2, 10)
    notice, welcome = fake_line.delivered(newcomer)
    assert notice["text"] == kb.message("disaster_mode_notice", "en")
    assert welcome["text"] == kb.message("welcome", "en") and welcome["quickReply"]["items"]

    set_disaster_mode(assistant.sessions, False)
    _line_post(app, fake_line, line_event("postback", user, fake_line.issue_reply_token(user),
                                          postback={"data": "consult:staff"}))
    wait_until(lambda: len(fake_line.delivered(user)) >= 5, 10)
    assert "Disaster Support Desk" not in fake_line.delivered(user)[-1]["text"]
    assert re.search(r"\{[a-z_]+\}", handoff) is None


def test_disaster_answers_come_first_among_suggestions(world: World) -> None:
    from bot.engine_client import EngineReply
    from bot.pipeline import Assistant
    from bot.safety import SafetyNet

    assistant = Assistant(world.kb, world.sessions, engine=None, safety=SafetyNet.load(),  # type: ignore[arg-type]
                          connectors={})
    ranking = [{"key": "faq/bank_account_opening"}, {"key": "faq/garbage_sorting"},
               {"key": "faq/my_number"}, {"key": "faq/tsunami_evacuation"}]
    reply = EngineReply(responses=[], parse={"faq_ranking": ranking})
    normal = assistant._suggest(reply, "en")
    first = assistant._suggest(reply, "en", disaster_first=True)
    assert normal.buttons[0].title == world.kb.title("bank_account_opening", "en")
    assert first.buttons[0].title == world.kb.title("tsunami_evacuation", "en")
