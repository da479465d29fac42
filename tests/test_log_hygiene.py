"""No message body, token, secret or signature in the logs (issue 7): a whole dialogue on REST, LINE
and Telegram (hand-offs, an emergency, delivery failures, a wrong signature and a wrong secret, data
deletion), every record of the app's loggers captured at DEBUG and scanned. Rasa is stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from bot.knowledge import KnowledgeBase
from tests.conftest import Chat, line_settings, telegram_settings, wait_until
from tests.fakes import FakeLine, FakeTelegram, line_event, telegram_message_update, webhook_body
from tests.test_line import LineUser
from tests.test_telegram import SECRET, TelegramUser

MARK = "Quokka7319"
"""In every body the users send: found in a log, even a piece of a body would be caught."""
BODIES = [
    f"I lost my residence card {MARK} what now",
    f"My friend collapsed and is not breathing {MARK}",
    f"Bitte helfen Sie mir {MARK} mit dem Visum",
    f"在留カードをなくしました {MARK}",
    f"Tôi cần giúp đỡ về visa {MARK}",
]
WINDOW = 10
"""Any 10 characters in a row of a body count as a leak (a log that cuts a body short is still one)."""
APP_LOGGERS = ("", "bot", "connectors", "fastapi", "starlette", "alembic")
"""The app's loggers (and the root). The platform SDKs' and HTTP clients' loggers are set to WARNING by
the channels (they log URLs with the bot token at DEBUG); SQLAlchemy keeps its own WARNING default."""


def scanned_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
    return "\n".join(parts)


def test_a_whole_dialogue_logs_no_bodies_tokens_or_signatures(
    database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str, fake_line: FakeLine,
    fake_telegram: FakeTelegram, kb: KnowledgeBase, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in APP_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    client = make_client(database_url, dead_engine_url, **line_settings(fake_line),
                         **telegram_settings(fake_telegram))
    signatures: list[str] = []
    sign = fake_line.sign

    def recording_sign(body: bytes) -> str:
        signatures.append(sign(body))
        return signatures[-1]

    fake_line.sign = recording_sign  # type: ignore[method-assign]

    rest = Chat(client)
    for body in BODIES[:2]:
        rest.say(body)
    rest.say("/delete_my_data")

    line = LineUser(client, fake_line)
    line.send(line_event("follow", line.user_id, fake_line.issue_reply_token(line.user_id),
                         follow={"isUnblocked": False}))
    fake_line.expire_reply_tokens()
    fake_line.fail("/v2/bot/message/push", 500, {"message": f"error {MARK}"})
    for body in BODIES[2:4]:
        line.say(body)
    line.send(line_event("postback", line.user_id, fake_line.issue_reply_token(line.user_id),
                         postback={"data": "consult:staff"}))
    wrong = fake_line.sign(b"something else")
    signatures.append(wrong)
    assert line.post(line_event("message", line.user_id, "t", message={"type": "text", "id": "1",
                                                                        "text": BODIES[0]}),
                     signature=wrong).status_code == 400

    telegram = TelegramUser(client, fake_telegram, "vi")
    telegram.say("/start")
    fake_telegram.fail("/sendMessage", 500, {"ok": False, "error_code": 500, "description": f"boom {MARK}"})
    telegram.say(BODIES[4])
    telegram.say("/staff")
    telegram.say("/start")
    telegram.press(telegram.buttons()[0])
    assert telegram.post(telegram_message_update(1, telegram.user_id, BODIES[1]), secret="wrong").status_code == 403
    wait_until(lambda: len(line.texts()) >= 3 and len(telegram.texts()) >= 4, timeout=30)
    assert kb.message("handoff_created", "vi", when="").split("\n")[0] in "\n".join(telegram.texts())
    signatures.append(fake_line.sign(webhook_body()))
    text = scanned_text(caplog.records)
    assert len(caplog.records) > 30, "the app's loggers were captured"
    assert "escalation=" in text and "delivery retry" in text, "the scan saw the interesting paths"
    secrets = [fake_line.channel_secret, fake_line.access_token, fake_telegram.token, SECRET,
               fake_telegram.token.split(":")[1]]
    pieces = {body[i : i + WINDOW] for body in BODIES for i in range(len(body) - WINDOW + 1)}
    leaks = [s for s in [*pieces, MARK, *secrets, *filter(None, signatures)] if s in text]
    assert leaks == []
