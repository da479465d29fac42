"""Users give their area (a municipality of region.yml): the LINE menu, Telegram /area, a REST
message; an alert for 盛岡市 then reaches only the Morioka user, and the check-in dashboard
counts their answer under 盛岡市. Rasa is stopped (never needed). Each on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.areas import AreaDirectory, check_areas
from bot.broadcast import AlertError, BroadcastService
from bot.checkin import checkin_counts
from bot.db.models import Identity, User
from bot.knowledge import KnowledgeBase, Municipality
from bot.pipeline import area_argument
from connectors.broadcast import broadcasters
from tests import test_broadcast
from tests.conftest import Chat, line_settings, telegram_settings, wait_until
from tests.fakes import FakeLine, FakeTelegram, line_event
from tests.test_broadcast import World, run
from tests.test_line import LineUser
from tests.test_telegram import EMERGENCY, TelegramUser

world = test_broadcast.world


@pytest.fixture
def app(database_url: str, fake_line: FakeLine, fake_telegram: FakeTelegram,
        make_client: Callable[..., TestClient], dead_engine_url: str) -> TestClient:
    """The whole app on LINE, Telegram and REST, with Rasa stopped."""
    return make_client(database_url, dead_engine_url, **line_settings(fake_line), **telegram_settings(fake_telegram))


def line_user(app: TestClient, fake: FakeLine, language: str) -> LineUser:
    """A LINE user who followed the account (their profile language becomes the platform hint)."""
    user = LineUser(app, fake)
    fake.profiles[user.user_id] = language
    user.send(line_event("follow", user.user_id, fake.issue_reply_token(user.user_id), follow={"isUnblocked": False}))
    return user


def tap(user: LineUser, data: str) -> None:
    user.send(line_event("postback", user.user_id, user.fake.issue_reply_token(user.user_id),
                         postback={"data": data}))


def texts(replies: list[dict[str, Any]]) -> list[str]:
    return [reply["text"] for reply in replies]


def areas_by_user(app: TestClient) -> dict[str, str | None]:
    assistant = app.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        rows = session.execute(select(Identity.platform_user_id, User.area).join(User, User.id == Identity.user_id))
        return {address: area for address, area in rows}


def test_users_give_their_area_and_an_alert_for_morioka_reaches_only_morioka(
    app: TestClient, fake_line: FakeLine, fake_telegram: FakeTelegram, kb: KnowledgeBase
) -> None:
    morioka = line_user(app, fake_line, "en")
    tap(morioka, "consult:area")
    prompt = morioka.texts()[-1]
    assert prompt == kb.message("area_prompt", "en", example="Morioka")
    assert prompt.startswith("Which city, town or village in Iwate Prefecture do you live in?")
    assert 'for example "Morioka"' in prompt and "disaster alerts" in prompt and "safety check-in" in prompt
    morioka.say("Morioka")
    assert morioka.texts()[-1] == "Your area is now Morioka (盛岡市). Alerts for this area will reach you."

    nowhere = line_user(app, fake_line, "en")  # never gives an area
    ichinoseki = TelegramUser(app, fake_telegram, language_code="vi")
    ichinoseki.say("/area 一関市")
    assert ichinoseki.texts() == [kb.message("area_set", "vi", area="Ichinoseki (一関市)")]
    assert ichinoseki.texts()[0].startswith("Khu vực của bạn bây giờ là Ichinoseki (一関市).")

    web = Chat(app)
    assert texts(web.say("/area")) == [kb.message("area_prompt", "en", example="Morioka")]
    assert texts(web.say("Tokyo")) == [
        'I could not find that city, town or village in Iwate Prefecture. Please write its name, for example "Morioka".'
    ]
    assert texts(web.say("Tokyo")) == [kb.message("please_wait", "en")], "told once, then the conversation goes on"

    assert areas_by_user(app) == {morioka.user_id: "盛岡市", nowhere.user_id: None,
                                  str(ichinoseki.user_id): "一関市", web.sender: None}

    assistant = app.app.state.assistant  # type: ignore[attr-defined]
    service: BroadcastService = app.app.state.broadcasts  # type: ignore[attr-defined]
    senders = broadcasters(app.app.state.settings)  # type: ignore[attr-defined]
    staff = BroadcastService(kb, assistant.sessions, senders)  # e.g. the CLI, queueing for the app's worker
    alert = run(senders, staff.create_alert("checkin", {"area": "盛岡市"}, areas=["盛岡市"]))
    wait_until(lambda: service.progress(alert)["status"] == "done", 20)

    assert fake_line.received[morioka.user_id] == 1
    assert fake_line.received[nowhere.user_id] == 0
    assert len(ichinoseki.texts()) == 1, "the Ichinoseki user got nothing after their own confirmation"
    shown = fake_line.delivered(morioka.user_id)[-1]
    assert shown["text"].startswith("[Safety check-in (安否確認)]")
    safe = shown["quickReply"]["items"][0]["action"]
    assert safe["label"] == "I am safe"
    tap(morioka, safe["data"])
    assert morioka.texts()[-1] == kb.message("checkin_recorded_safe", "en")

    counts = checkin_counts(assistant.sessions, alert)
    assert counts["areas"] == {"盛岡市": {"safe": 1, "help": 0}}
    assert (counts["reached"], counts["not_answered"]) == (1, 0)


def test_the_area_is_confirmed_in_the_users_language_and_can_be_changed(app: TestClient, kb: KnowledgeBase) -> None:
    kana = Chat(app)  # nothing known about the user: kana only reads as easy Japanese
    assert texts(kana.say("もりおか")) == ["あなたの 地域(ちいき)を 盛岡市(もりおかし)に しました。"
                                          "この 地域(ちいき)の 災害(さいがい)の お知(し)らせが 届(とど)きます。"]
    vietnamese = Chat(app)
    vietnamese.say("Tiếng Việt")
    assert texts(vietnamese.say("盛岡市")) == [kb.message("area_set", "vi", area="Morioka (盛岡市)")], \
        "a place name written in kanji does not turn the answers into Chinese"
    japanese = Chat(app)
    japanese.say("日本語")
    assert texts(japanese.say("Oshu City")) == ["地域を奥州市にしました。この地域あての災害情報が届きます。"]
    assert texts(japanese.say("/area")) == ["今の地域は奥州市です。",
                                            kb.message("area_prompt", "ja", example="盛岡市")]
    assert texts(japanese.say("金ヶ崎町")) == ["地域を金ケ崎町にしました。この地域あての災害情報が届きます。"]
    assert areas_by_user(app)[japanese.sender] == "金ケ崎町"
    telegram_style = Chat(app)
    assert texts(telegram_style.say("/area@consult_bot Rikuzen-Takata")) == [
        kb.message("area_set", "en", area="Rikuzentakata (陸前高田市)")
    ]
    assert texts(telegram_style.say("/area Atlantis")) == [kb.message("area_unknown", "en", example="Morioka")]


def test_the_area_prompt_never_swallows_an_emergency_or_a_question(app: TestClient, kb: KnowledgeBase) -> None:
    user = Chat(app)
    user.say("/area")
    assert texts(user.say(EMERGENCY)) == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    assert texts(user.say("Tokyo")) == [kb.message("please_wait", "en")], "the prompt ended with the emergency"
    other = Chat(app)
    other.say("/area")
    question = "How do I renew my residence card before it expires?"
    assert texts(other.say(question)) == [kb.message("please_wait", "en")], "a question goes on to the (stopped) engine"
    third = Chat(app)
    third.say("/area")
    assert texts(third.say("Iwate")) == [kb.message("area_unknown", "en", example="Morioka")], \
        "Iwate alone is the prefecture, not 岩手町"
    assert texts(third.say("Iwate Town")) == [kb.message("area_set", "en", area="Iwate (岩手町)")]


def test_the_telegram_area_command_and_the_line_menu_panel(app: TestClient, fake_line: FakeLine,
                                                           fake_telegram: FakeTelegram, kb: KnowledgeBase) -> None:
    telegram = TelegramUser(app, fake_telegram, language_code="es")
    telegram.say("/area")
    assert telegram.texts() == [kb.message("area_prompt", "es", example="Morioka")]
    telegram.say("hiraizumi-cho")
    assert telegram.texts()[-1] == kb.message("area_set", "es", area="Hiraizumi (平泉町)")
    line = line_user(app, fake_line, "pt")
    line.say("/area Kuji")  # typed on LINE
    assert line.texts()[-1] == kb.message("area_set", "pt", area="Kuji (久慈市)")
    assert areas_by_user(app) == {str(telegram.user_id): "平泉町", line.user_id: "久慈市"}


def test_alert_areas_are_resolved_like_users_write_them_and_unknown_ones_refused(world: World) -> None:
    morioka = world.user("line", "Umorioka", "en", "盛岡市")
    world.user("line", "Umiyako", "en", "宮古市")
    service = world.service(world.senders())
    assert service.municipalities(["Morioka", "盛岡", " "]) == ["盛岡市"]
    with pytest.raises(AlertError, match=r"unknown area Tokio; an area is a municipality of region\.yml, e\.g\. 盛岡"):
        asyncio.run(service.create_alert("checkin", {"area": "盛岡市"}, areas=["Tokio"]))
    assert [r.user_id for r in service.recipients(areas=service.municipalities(["morioka-shi"]))] == [morioka]


# ---------------------------------------------------------------------------- the list and its check


@pytest.mark.parametrize(("written", "stored"), [
    ("盛岡市", "盛岡市"), ("盛岡", "盛岡市"), ("もりおか", "盛岡市"), ("モリオカシ", "盛岡市"), ("Morioka", "盛岡市"),
    ("morioka-shi", "盛岡市"), ("Morioka City", "盛岡市"), ("ＭＯＲＩＯＫＡ", "盛岡市"), ("岩手県盛岡市", "盛岡市"),
    ("  morioka  ", "盛岡市"), ("Ōshū", "奥州市"), ("Oushuu", "奥州市"), ("Tohno", "遠野市"),
    ("city of Kuji", "久慈市"),
    ("金ヶ崎", "金ケ崎町"), ("Kanegasaki-cho", "金ケ崎町"), ("Hiraizumi Town", "平泉町"), ("Ichinoseki", "一関市"),
    ("Rikuzentakata", "陸前高田市"), ("Kunohe-mura", "九戸村"), ("Tanohata Village", "田野畑村"),
    ("iwate-machi", "岩手町"), ("Iwate", None), ("岩手", None), ("いわて", None), ("Tokyo", None), ("", None),
    ("I live in Morioka", None), ("Morioka" * 10, None),
])
def test_every_way_people_write_a_municipality(kb: KnowledgeBase, written: str, stored: str | None) -> None:
    found = AreaDirectory(kb.region).find(written)
    assert (found.name if found else None) == stored


def test_the_region_lists_iwates_33_municipalities(kb: KnowledgeBase) -> None:
    names = [m.name for m in kb.region.municipalities]
    assert len(names) == 33 and len(set(names)) == 33
    assert sum(name.endswith("市") for name in names) == 14
    assert sum(name.endswith("町") for name in names) == 15
    assert sum(name.endswith("村") for name in names) == 4
    assert check_areas(kb) == []


def test_the_check_finds_what_would_confuse_users(kb: KnowledgeBase) -> None:
    broken = (
        *kb.region.municipalities,
        Municipality("盛岡市", "もりおかし", "Morioka"),
        Municipality("森岡町", "もりおかちょう", "Morioka"),
        Municipality("花巻", "はなまき", "Hanamaki"),
        Municipality("遠野村", "トオノムラ", "Tōno"),
        Municipality("北村", "きたまち", "Kita"),
        Municipality("英語市", "えいごし", "English"),
    )
    bad = dataclasses.replace(kb, region=dataclasses.replace(kb.region, municipalities=broken))
    problems = check_areas(bad)
    where = "region.yml: municipalities"
    assert f"{where}: 盛岡市 is listed twice" in problems
    assert f"{where}: 'morioka' names 森岡町 and 盛岡市; it matches neither" in problems
    assert f"{where}: 花巻 does not end with one of 市区町村" in problems
    assert f"{where}: the reading of 遠野村 must be hiragana, not 'トオノムラ'" in problems
    assert f"{where}: the romaji of 遠野村 must be Latin letters without macrons, not 'Tōno'" in problems
    assert f"{where}: the reading of 北村 must end with むら or そん" in problems
    assert f"{where}: 英語市 is written like a language's name: english, えいご, 英語" in problems
    empty = dataclasses.replace(kb, region=dataclasses.replace(kb.region, municipalities=()))
    assert check_areas(empty) == [f"{where}: none listed, so users cannot give their area"]


@pytest.mark.parametrize(("text", "argument"), [
    ("/area", ""), ("/area 一関市", "一関市"), ("/AREA@consult_bot  Morioka ", "Morioka"), ("/areas", None),
    ("area Morioka", None), ("/area\nMorioka", "Morioka"),
])
def test_the_area_command(text: str, argument: str | None) -> None:
    assert area_argument(text) == argument
