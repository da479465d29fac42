"""LINE and Telegram delivery edge cases (issue 4): rich menu on a language change, a blocked bot,
a send that timed out after Telegram took it, and a long flood-control wait. Rasa is stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bot.db.models import DeliveryAttempt, Identity, Message
from bot.knowledge import KnowledgeBase
from connectors.line.__main__ import create_rich_menus
from tests import test_line, test_telegram
from tests.conftest import wait_until
from tests.fakes import line_event
from tests.test_line import LineUser
from tests.test_telegram import EMERGENCY, TelegramUser
from tests.test_telegram import rows as telegram_rows

make_line = test_line.make_line
make_telegram = test_telegram.make_telegram

QUESTION = "How do I renew my visa?"


# ------------------------------------------------------------------ LINE rich menus


def test_choosing_a_language_links_the_line_user_to_that_menu_at_once(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    menus = asyncio.run(create_rich_menus(user.client.app.state.settings))  # type: ignore[attr-defined]
    user.say("한국어")
    assert user.texts() == [kb.message("language_changed", "ko")]
    assert user.fake.user_menus[user.user_id] == menus["ko"]
    user.say("Español")
    assert user.fake.user_menus[user.user_id] == menus["es"]
    user.say("🙂")  # nothing changed: no second link
    links = user.fake.calls_to(f"/v2/bot/user/{user.user_id}/richmenu/{menus['es']}")
    assert len(links) == 1


def test_a_new_line_user_gets_the_menu_of_their_profile_language(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    menus = asyncio.run(create_rich_menus(user.client.app.state.settings))  # type: ignore[attr-defined]
    user.fake.profiles[user.user_id] = "pt-BR"
    user.send(line_event("follow", user.user_id, user.fake.issue_reply_token(user.user_id),
                         follow={"isUnblocked": False}))
    assert user.texts()[0] == kb.message("welcome", "pt")
    assert user.fake.user_menus[user.user_id] == menus["pt"]


def test_no_rich_menus_or_a_failing_menu_api_never_costs_the_answer(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.say("Tiếng Việt")  # no menus created: the alias is unknown (404)
    assert user.texts() == [kb.message("language_changed", "vi")]
    assert user.fake.user_menus == {}
    user.fake.aliases["consult-id"] = "richmenu-x"
    user.fake.fail("/v2/bot/user/" + user.user_id + "/richmenu/richmenu-x", 500)
    user.say("Bahasa Indonesia")
    assert user.texts()[-1] == kb.message("language_changed", "id")
    assert user.user_id not in user.fake.user_menus


# ------------------------------------------------------------------ Telegram: blocked, timed out, long waits


def blocked(user: TelegramUser) -> None:
    user.fake.fail("/sendMessage", 403, {"ok": False, "error_code": 403,
                                         "description": "Forbidden: bot was blocked by the user"})


def test_a_403_on_send_marks_the_user_unsubscribed_and_is_not_retried(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    blocked(user)
    user.say(EMERGENCY)
    (identity,) = telegram_rows(user.client, Identity)
    assert identity.unsubscribed
    time.sleep(1.0)  # five rounds of the retry worker
    assert [c.status for c in user.fake.calls_to("/sendMessage")] == [403]
    outbound = telegram_rows(user.client, Message, Message.direction == "out")
    assert [m.status for m in outbound] == ["failed", "failed"]
    assert [a.outcome for a in telegram_rows(user.client, DeliveryAttempt)] == ["failed"]
    user.say("Tiếng Việt")  # the user unblocked the bot and writes again
    assert user.texts() == [kb.message("language_changed", "vi")]
    (identity,) = telegram_rows(user.client, Identity)
    assert not identity.unsubscribed


def test_a_reply_waiting_for_retry_is_dropped_once_the_user_blocked_the_bot(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.fake.fail("/sendMessage", 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
    blocked(user)
    user.say(QUESTION)
    wait_until(lambda: len(user.fake.calls_to("/sendMessage")) == 2, timeout=15)
    time.sleep(0.6)
    assert [c.status for c in user.fake.calls_to("/sendMessage")] == [500, 403]
    assert user.texts() == []
    assert telegram_rows(user.client, Identity)[0].unsubscribed


def test_a_send_that_timed_out_after_telegram_took_it_is_not_sent_twice(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()  # telegram_timeout is 1 s
    user.fake.stall("/sendMessage", 1.5)
    user.say(QUESTION)
    wait_until(lambda: user.texts(), timeout=5)  # the fake shows it once the stall is over
    time.sleep(1.0)
    assert user.texts() == [kb.message("please_wait", "en")]
    (reply,) = telegram_rows(user.client, Message, Message.direction == "out")
    assert reply.status == "uncertain"
    attempts = telegram_rows(user.client, DeliveryAttempt)
    assert [(a.outcome, a.detail) for a in attempts] == [("uncertain", "Telegram ReadTimeout")]


def test_an_emergency_answer_that_timed_out_is_sent_again(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    """The trade-off, chosen: for 119/110 guidance a duplicate is better than a possible loss."""
    user = make_telegram()
    user.fake.stall("/sendMessage", 1.5)
    user.say(EMERGENCY)
    wait_until(lambda: len(user.texts()) == 3, timeout=15)
    medical, followup = kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")
    assert user.texts() == [medical, medical, followup]


def test_a_connection_refused_is_retried_as_not_sent(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.fake.fail("/sendMessage", 502, {"ok": False, "error_code": 502, "description": "Bad Gateway"})
    user.say(QUESTION)
    wait_until(lambda: user.texts(), timeout=15)
    assert user.texts() == [kb.message("please_wait", "en")]


def test_a_flood_wait_longer_than_five_seconds_goes_to_the_retry_worker_and_arrives_once(
    make_telegram: Callable[..., TelegramUser], kb: KnowledgeBase
) -> None:
    user = make_telegram()
    user.fake.fail("/sendMessage", 429, {"ok": False, "error_code": 429, "parameters": {"retry_after": 6},
                                        "description": "Too Many Requests: retry after 6"})
    started = time.monotonic()
    user.say(EMERGENCY)
    assert time.monotonic() - started < 4, "the webhook's background task does not sleep through the wait"
    outbound = telegram_rows(user.client, Message, Message.direction == "out")
    assert [m.status for m in outbound] == ["retry", "retry"]
    assert all(m.next_attempt_at is not None for m in outbound)
    wait_until(lambda: len(user.texts()) == 2, timeout=20)
    assert time.monotonic() - started >= 6
    time.sleep(0.6)
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    assert [c.status for c in user.fake.calls_to("/sendMessage")] == [429, 200, 200]
    assert [a.outcome for a in telegram_rows(user.client, DeliveryAttempt)] == ["retry", "sent"]
