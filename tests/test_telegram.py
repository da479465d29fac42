"""The Telegram channel with Rasa stopped: updates in, what the user sees at the fake Bot API."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import Escalation, Identity, Message
from bot.knowledge import KnowledgeBase
from bot.settings import Settings
from connectors.telegram import TelegramChannel
from connectors.telegram.__main__ import set_webhook
from tests.conftest import telegram_settings, wait_until
from tests.fakes import FakeTelegram, telegram_callback_update, telegram_message_update

EMERGENCY = "My friend collapsed and is not breathing"
SECRET = "telegram-test-secret"
_update_ids = itertools.count(random.randint(10_000, 90_000) * 1000)


class TelegramUser:
    """A Telegram user in a private chat with the bot."""

    def __init__(self, client: TestClient, fake: FakeTelegram, language_code: str | None = "en") -> None:
        self.client = client
        self.fake = fake
        self.user_id = random.randint(10**8, 10**9)
        self.language_code = language_code

    def post(self, update: dict[str, Any], secret: str | None = SECRET) -> Any:
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["x-telegram-bot-api-secret-token"] = secret
        return self.client.post("/webhooks/telegram", content=json.dumps(update), headers=headers)

    def send(self, update: dict[str, Any]) -> None:
        response = self.post(update)
        assert response.status_code == 200, response.text

    def say(self, text: str) -> None:
        self.send(telegram_message_update(next(_update_ids), self.user_id, text, self.language_code))

    def press(self, button: dict[str, Any]) -> str:
        update = telegram_callback_update(next(_update_ids), self.user_id, button["callback_data"],
                                          self.language_code)
        self.send(update)
        return str(update["callback_query"]["id"])

    def texts(self) -> list[str]:
        return [m["text"] for m in self.fake.delivered(self.user_id)]

    def buttons(self) -> list[dict[str, Any]]:
        shown = self.fake.delivered(self.user_id)
        markup = shown[-1].get("reply_markup") if shown else None
        return [row[0] for row in (markup or {}).get("inline_keyboard", [])]


@pytest.fixture
def make_telegram(database_url: str, fake_telegram: FakeTelegram, make_client: Callable[..., TestClient],
                  dead_engine_url: str) -> Callable[..., TelegramUser]:
    clients: list[TestClient] = []

    def factory(language_code: str | None = "en", **settings: Any) -> TelegramUser:
        if not clients:
            clients.append(make_client(database_url, dead_engine_url, **telegram_settings(fake_telegram, **settings)))
        return TelegramUser(clients[0], fake_telegram, language_code)

    return factory


def rows(client: TestClient, model: type, *where: object) -> list[Any]:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))  # type: ignore[attr-defined]


def test_emergency_is_answered_at_once(make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase) -> None:
    user = make_telegram()
    user.say(EMERGENCY)
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    assert [(e.reason, e.urgent) for e in rows(user.client, Escalation)] == [("safety", True)]


@pytest.mark.parametrize("secret", [None, "", "wrong-secret"])
def test_missing_or_wrong_secret_token_gets_403_and_nothing_happens(
    make_telegram: Callable[..., TelegramUser], secret: str | None
) -> None:
    user = make_telegram()
    response = user.post(telegram_message_update(next(_update_ids), user.user_id, EMERGENCY), secret=secret)
    assert response.status_code == 403
    assert "Secret-Token" in response.json()["error"]
    assert rows(user.client, Message) == []
    assert user.fake.calls == []


@pytest.mark.parametrize("body", ["not json", "[]", '{"message": {}}', '{"update_id": "x"}'])
def test_garbage_gets_400_not_500(make_telegram: Callable[..., TelegramUser], body: str) -> None:
    user = make_telegram()
    response = user.client.post("/webhooks/telegram", content=body,
                                headers={"x-telegram-bot-api-secret-token": SECRET})
    assert response.status_code == 400
    assert "update_id" in response.json()["error"]


def test_a_retried_update_is_answered_once(make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase) -> None:
    user = make_telegram()
    update = telegram_message_update(next(_update_ids), user.user_id, EMERGENCY)
    user.send(update)
    user.send(update)
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]


def test_start_welcomes_in_the_language_code_and_buttons_are_answered(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram(language_code="es")
    user.say("/start")
    assert user.texts() == [kb.message("welcome", "es")]
    buttons = user.buttons()
    assert [b["text"] for b in buttons] == [kb.language_label(code) for code in kb.languages]
    assert all(len(b["callback_data"].encode()) <= 64 for b in buttons)
    nepali = next(b for b in buttons if b["text"] == kb.language_label("ne"))
    callback_id = user.press(nepali)
    assert [c.body["callback_query_id"] for c in user.fake.method_calls("answerCallbackQuery")] == [callback_id]
    assert user.texts()[-1] == kb.message("language_changed", "ne")


@pytest.mark.parametrize(
    ("command", "key"),
    [("/help", "help"), ("/language", "language_menu"), ("/help@consult_test_bot", "help")],
)
def test_commands_answer_in_the_users_language(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase, command: str, key: str
) -> None:
    user = make_telegram(language_code="vi")
    user.say(command)
    assert user.texts() == [kb.message(key, "vi")]


def test_staff_command_hands_off_without_the_engine(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram(language_code="ko")
    user.say("/staff")
    assert kb.message("handoff_created", "ko", when="").split("\n")[0] in user.texts()[0]
    assert [(e.reason, e.language) for e in rows(user.client, Escalation)] == [("requested", "ko")]


def test_delete_my_data_deletes_messages_cases_and_language(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram(language_code="en")
    user.say("Português")
    user.say(EMERGENCY)
    assert rows(user.client, Escalation)
    user.say("/delete_my_data")
    assert user.texts()[-1] == kb.message("data_deleted", "pt")
    assert rows(user.client, Escalation) == []
    stored = rows(user.client, Message)
    assert [(m.direction, m.text) for m in stored] == [("in", ""), ("out", kb.message("data_deleted", "pt"))]
    user.say("🙂")
    assert user.texts()[-1] == kb.message("empty_prompt", "en"), "the language choice is gone too"


def test_sticker_gets_a_short_reply(make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase) -> None:
    user = make_telegram(language_code="id")
    sticker = {"file_id": "f", "file_unique_id": "u", "type": "regular", "width": 512, "height": 512,
               "is_animated": False, "is_video": False}
    user.send(telegram_message_update(next(_update_ids), user.user_id, None, "id", sticker=sticker))
    assert user.texts() == [kb.message("unsupported_message", "id")]


def test_blocking_the_bot_marks_the_user_unsubscribed(make_telegram: Callable[..., TelegramUser]) -> None:
    user = make_telegram()
    user.say(EMERGENCY)
    member = {"user": {"id": 123456, "is_bot": True, "first_name": "Consult"}}
    user.send({
        "update_id": next(_update_ids),
        "my_chat_member": {
            "chat": {"id": user.user_id, "type": "private"}, "from": {"id": user.user_id, "is_bot": False,
                                                                     "first_name": "T"},
            "date": 1, "old_chat_member": {**member, "status": "member"},
            "new_chat_member": {**member, "status": "kicked", "until_date": 0},
        },
    })
    (identity,) = rows(user.client, Identity)
    assert identity.unsubscribed


def test_flood_control_retry_after_is_respected(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.fake.fail("/sendMessage", 429, {"ok": False, "error_code": 429, "parameters": {"retry_after": 1},
                                        "description": "Too Many Requests: retry after 1"})
    user.say(EMERGENCY)
    calls = user.fake.calls_to("/sendMessage")
    assert [c.status for c in calls] == [429, 200, 200]
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]


def test_server_error_retries_only_what_did_not_arrive(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.fake.fail("/sendMessage", 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"},
                   after=1)
    user.say(EMERGENCY)
    assert user.texts() == [kb.message("emergency_medical", "en")]
    wait_until(lambda: len(user.texts()) == 2, timeout=15)
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]


def test_typing_indicator_while_the_assistant_thinks(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.say("How do I renew my visa?")
    (typing, *_) = user.fake.method_calls("sendChatAction")
    assert typing.body == {"chat_id": user.user_id, "action": "typing"}
    assert user.texts() == [kb.message("please_wait", "en")]


def test_the_bot_token_never_reaches_the_logs(
    make_telegram: Callable[..., TelegramUser], caplog: pytest.LogCaptureFixture
) -> None:
    user = make_telegram()
    with caplog.at_level(logging.DEBUG):
        user.say(EMERGENCY)
        user.fake.fail("/sendMessage", 500, {"ok": False, "error_code": 500, "description": "x"})
        user.say("Tiếng Việt")
    assert user.texts()
    assert user.fake.token not in caplog.text
    assert "collapsed" not in caplog.text


def test_long_polling_answers_without_a_webhook(
    database_url: str, fake_telegram: FakeTelegram, make_client: Callable[..., TestClient], dead_engine_url: str,
    kb: KnowledgeBase,
) -> None:
    make_client(database_url, dead_engine_url, **telegram_settings(fake_telegram, telegram_polling=True))
    fake_telegram.updates.append(telegram_message_update(7001, 4242, EMERGENCY))
    wait_until(lambda: len(fake_telegram.delivered(4242)) == 2, timeout=15)
    assert fake_telegram.method_calls("deleteWebhook")
    assert fake_telegram.delivered(4242)[0]["text"] == kb.message("emergency_medical", "en")
    later = [c.body.get("offset") for c in fake_telegram.method_calls("getUpdates")]
    assert 7002 in later, "the next getUpdates confirms the update"


def test_set_webhook_registers_the_secret_and_the_commands_per_language(
    fake_telegram: FakeTelegram, kb: KnowledgeBase
) -> None:
    settings = Settings(**telegram_settings(fake_telegram, telegram_public_url="https://consult.example.org/"))
    channel = TelegramChannel.from_settings(settings)

    async def run() -> str:
        try:
            return await set_webhook(channel.telegram, settings, kb)
        finally:
            await channel.close()

    url = asyncio.run(run())
    assert url == "https://consult.example.org/webhooks/telegram"
    (hook,) = fake_telegram.method_calls("setWebhook")
    assert hook.body["url"] == url and hook.body["secret_token"] == SECRET
    menus = {c.body.get("language_code"): c.body["commands"] for c in fake_telegram.method_calls("setMyCommands")}
    assert set(menus) == {None, "ja", "en", "zh", "vi", "ko", "pt", "ne", "tl", "id", "es"}
    assert [c["command"] for c in menus["ja"]] == ["start", "help", "language", "area", "staff", "delete_my_data"]
    assert menus["ja"][3]["description"] == kb.message("command_area", "ja")
    assert menus["ja"][5]["description"] == kb.message("command_delete_my_data", "ja")
