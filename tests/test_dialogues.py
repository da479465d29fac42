"""One suite of dialogues, the same on every channel: REST, LINE and Telegram, through the trained model.

A channel driver says something as a user and returns what that user sees: the texts and the
buttons, read from the REST answer or counted at the fake LINE / Telegram server.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Escalation
from bot.knowledge import KnowledgeBase
from tests.conftest import Chat, EngineProcess, line_settings, telegram_settings
from tests.fakes import (
    FakeLine,
    FakeTelegram,
    telegram_callback_update,
    telegram_message_update,
    text_event,
    webhook_body,
)
from tests.fakes import line_event as make_line_event

pytestmark = pytest.mark.engine

CHANNELS = ("rest", "line", "telegram")
_update_ids = itertools.count(random.randint(100_000, 900_000) * 1000)


@dataclass(frozen=True)
class Shown:
    """One message as the user sees it; ``press`` holds what tapping each button sends."""

    text: str
    buttons: tuple[str, ...] = ()
    press: tuple[Any, ...] = field(default=(), compare=False)


class Driver(Protocol):
    client: TestClient

    def say(self, text: str) -> list[Shown]: ...

    def press(self, shown: Shown, title: str) -> list[Shown]: ...


class RestDriver:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.chat = Chat(client)

    def _shown(self, replies: list[dict[str, Any]]) -> list[Shown]:
        return [Shown(r["text"], tuple(b["title"] for b in r.get("buttons", [])),
                      tuple(b["payload"] for b in r.get("buttons", []))) for r in replies]

    def say(self, text: str) -> list[Shown]:
        return self._shown(self.chat.say(text))

    def press(self, shown: Shown, title: str) -> list[Shown]:
        return self._shown(self.chat.say(shown.press[shown.buttons.index(title)]))


class LineDriver:
    def __init__(self, client: TestClient, fake: FakeLine) -> None:
        self.client = client
        self.fake = fake
        self.user_id = f"U{uuid.uuid4().hex}"

    def _new(self, before: int) -> list[Shown]:
        shown = []
        for message in self.fake.delivered(self.user_id)[before:]:
            items = [item["action"] for item in (message.get("quickReply") or {}).get("items", [])]
            titles, data = tuple(a["displayText"] for a in items), tuple(a["data"] for a in items)
            shown.append(Shown(message["text"], titles, data))
        return shown

    def _send(self, event: dict[str, Any]) -> list[Shown]:
        before = len(self.fake.delivered(self.user_id))
        body = webhook_body(event)
        response = self.client.post("/webhooks/line", content=body, headers={"x-line-signature": self.fake.sign(body)})
        assert response.status_code == 200, response.text
        return self._new(before)

    def say(self, text: str) -> list[Shown]:
        return self._send(text_event(self.user_id, self.fake.issue_reply_token(self.user_id), text))

    def press(self, shown: Shown, title: str) -> list[Shown]:
        data = shown.press[shown.buttons.index(title)]
        return self._send(make_line_event("postback", self.user_id, self.fake.issue_reply_token(self.user_id),
                                          postback={"data": data}))


class TelegramDriver:
    def __init__(self, client: TestClient, fake: FakeTelegram) -> None:
        self.client = client
        self.fake = fake
        self.user_id = random.randint(10**8, 10**9)

    def _send(self, update: dict[str, Any]) -> list[Shown]:
        before = len(self.fake.delivered(self.user_id))
        response = self.client.post("/webhooks/telegram", json=update,
                                    headers={"x-telegram-bot-api-secret-token": "telegram-test-secret"})
        assert response.status_code == 200, response.text
        shown = []
        for message in self.fake.delivered(self.user_id)[before:]:
            keys = [row[0] for row in (message.get("reply_markup") or {}).get("inline_keyboard", [])]
            titles, data = tuple(k["text"] for k in keys), tuple(k["callback_data"] for k in keys)
            shown.append(Shown(message["text"], titles, data))
        return shown

    def say(self, text: str) -> list[Shown]:
        return self._send(telegram_message_update(next(_update_ids), self.user_id, text, language_code=None))

    def press(self, shown: Shown, title: str) -> list[Shown]:
        data = shown.press[shown.buttons.index(title)]
        seen = self._send(telegram_callback_update(next(_update_ids), self.user_id, data, language_code=None))
        answered = [c.body["callback_query_id"] for c in self.fake.method_calls("answerCallbackQuery")]
        assert answered, "every button press is acknowledged"
        return seen


@pytest.fixture(params=CHANNELS)
def user(request: pytest.FixtureRequest, database_url: str, fake_line: FakeLine, fake_telegram: FakeTelegram,
         running_engine: EngineProcess, make_client: Callable[..., TestClient]) -> Driver:
    settings = {**line_settings(fake_line), **telegram_settings(fake_telegram)}
    client = make_client(database_url, running_engine.url, **settings)
    if request.param == "line":
        return LineDriver(client, fake_line)
    if request.param == "telegram":
        return TelegramDriver(client, fake_telegram)
    return RestDriver(client)


def texts(shown: list[Shown]) -> list[str]:
    return [s.text for s in shown]


def answer_text(kb: KnowledgeBase, entry_id: str, language: str) -> str:
    entry = kb.entries[entry_id]
    checked = kb.message("source_label", language, date=entry.last_checked.isoformat())
    return f"{kb.answer(entry_id, language)}\n\n{checked}"


def test_greeting_and_thanks(user: Driver, kb: KnowledgeBase) -> None:
    assert texts(user.say("hello")) == [kb.message("greet_reply", "en")]
    assert texts(user.say("thank you so much")) == [kb.message("thanks_reply", "en")]


def test_emergency_gets_119_guidance_first(user: Driver, kb: KnowledgeBase) -> None:
    shown = user.say("My friend collapsed and is not breathing")
    assert texts(shown) == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    assert "119" in shown[0].text


def test_asking_for_a_person_opens_a_case(user: Driver, kb: KnowledgeBase) -> None:
    (shown,) = user.say("I want to talk to a real person")
    assert kb.message("handoff_created", "en", when="").split("\n")[0] in shown.text
    assistant = user.client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        (escalation,) = session.scalars(select(Escalation)).all()
    assert (escalation.reason, escalation.language) == ("requested", "en")


def test_language_menu_and_a_choice_that_sticks(user: Driver, kb: KnowledgeBase) -> None:
    (menu,) = user.say("I want to change the language")
    assert menu.text == kb.message("language_menu", "en")
    assert menu.buttons == tuple(kb.language_label(code) for code in kb.languages)
    assert texts(user.press(menu, kb.language_label("vi"))) == [kb.message("language_changed", "vi")]
    assert texts(user.say("hello")) == [kb.message("greet_reply", "vi")]


def test_not_understood_twice_suggests_then_offers_staff(user: Driver, kb: KnowledgeBase) -> None:
    (first,) = user.say("qwerty zxcv asdf")
    assert first.text == kb.message("suggest_intro", "en")
    assert first.buttons[-1] == kb.message("suggest_none", "en") and 2 <= len(first.buttons) <= 4
    (offer,) = user.press(first, first.buttons[-1])
    assert offer.text == kb.message("offer_staff", "en")
    assert offer.buttons == (kb.message("button_staff_yes", "en"), kb.message("button_staff_no", "en"))
    (handoff,) = user.press(offer, offer.buttons[0])
    assert kb.message("handoff_created", "en", when="").split("\n")[0] in handoff.text


def test_a_question_is_answered_or_the_best_answers_are_offered(user: Driver, kb: KnowledgeBase) -> None:
    (shown,) = user.say("I lost my residence card")
    if shown.text == kb.message("suggest_intro", "en"):  # the classifier was unsure: the answer is a button away
        title = kb.title("lost_residence_card", "en")
        assert title in shown.buttons
        (shown,) = user.press(shown, title)
    assert shown.text == answer_text(kb, "lost_residence_card", "en")
    related = [kb.title(r, "en") for r in kb.entries["lost_residence_card"].related][:3]
    assert list(shown.buttons) == [*related, kb.message("button_helpful", "en"), kb.message("button_not_helpful", "en")]
    (follow,) = user.press(shown, related[0])
    assert follow.text == answer_text(kb, kb.entries["lost_residence_card"].related[0], "en")
