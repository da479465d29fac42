"""The LINE channel with Rasa stopped: signed webhooks in, what the user sees at the fake LINE API."""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db.models import DeliveryAttempt, Escalation, Identity, Message
from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES
from connectors.line import retry_key
from connectors.line.__main__ import create_rich_menus, plain_image
from tests.conftest import line_settings, wait_until
from tests.fakes import FakeLine, line_event, text_event, webhook_body

EMERGENCY = "My friend collapsed and is not breathing"


class LineUser:
    """A LINE user: sends signed webhooks, reads what LINE showed them."""

    def __init__(self, client: TestClient, fake: FakeLine, user_id: str | None = None) -> None:
        self.client = client
        self.fake = fake
        self.user_id = user_id or f"U{uuid.uuid4().hex}"

    def post(self, *events: dict[str, Any], signature: str | None = None) -> Any:
        body = webhook_body(*events)
        headers = {"content-type": "application/json",
                   "x-line-signature": signature if signature is not None else self.fake.sign(body)}
        return self.client.post("/webhooks/line", content=body, headers=headers)

    def send(self, event: dict[str, Any]) -> None:
        response = self.post(event)
        assert response.status_code == 200, response.text

    def say(self, text: str, **kw: Any) -> None:
        self.send(text_event(self.user_id, self.fake.issue_reply_token(self.user_id), text, **kw))

    def texts(self) -> list[str]:
        return [m["text"] for m in self.fake.delivered(self.user_id)]

    def quick_replies(self) -> list[dict[str, Any]]:
        shown = self.fake.delivered(self.user_id)
        return [item["action"] for item in (shown[-1].get("quickReply") or {}).get("items", [])] if shown else []


@pytest.fixture
def make_line(database_url: str, fake_line: FakeLine, make_client: Callable[..., TestClient],
              dead_engine_url: str) -> Callable[..., LineUser]:
    clients: list[TestClient] = []

    def factory(**settings: Any) -> LineUser:
        if not clients:
            clients.append(make_client(database_url, dead_engine_url, **line_settings(fake_line, **settings)))
        return LineUser(clients[0], fake_line)

    return factory


def rows(client: TestClient, model: type, *where: object) -> list[Any]:
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        return list(session.scalars(select(model).where(*where)))


def test_emergency_is_answered_with_the_reply_token(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line()
    user.say(EMERGENCY)
    assert user.texts()[:1] == [kb.message("emergency_medical", "en")]
    replies = [c for c in user.fake.calls_to("/v2/bot/message/reply") if c.status == 200]
    assert len(replies) == 1 and not user.fake.calls_to("/v2/bot/message/push")
    assert [(e.reason, e.urgent) for e in rows(user.client, Escalation)] == [("safety", True)]


@pytest.mark.parametrize(
    ("signature", "reason"),
    [(None, "X-Line-Signature"), ("", "X-Line-Signature"), ("d3Jvbmc=", "signature")],
)
def test_missing_or_wrong_signature_gets_400_and_nothing_happens(
    make_line: Callable[..., LineUser], caplog: pytest.LogCaptureFixture, signature: str | None, reason: str
) -> None:
    user = make_line()
    body = webhook_body(text_event(user.user_id, "token-1", "my secret question about my visa"))
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["x-line-signature"] = signature
    with caplog.at_level(logging.DEBUG):
        response = user.client.post("/webhooks/line", content=body, headers=headers)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert rows(user.client, Message) == []
    assert user.fake.calls == []
    assert "secret question" not in caplog.text
    if signature:
        assert signature not in caplog.text


@pytest.mark.parametrize("body", [b"not json", b'{"no": "events"}', b'{"events": 5}'])
def test_signed_garbage_gets_400_not_500(make_line: Callable[..., LineUser], body: bytes) -> None:
    user = make_line()
    response = user.client.post("/webhooks/line", content=body,
                                headers={"x-line-signature": user.fake.sign(body)})
    assert response.status_code == 400
    assert "LINE webhook" in response.json()["error"]


def test_redelivered_event_is_not_answered_twice(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line()
    token = user.fake.issue_reply_token(user.user_id)
    event = text_event(user.user_id, token, EMERGENCY, event_id="01HREDELIVERYTEST000000001")
    user.send(event)
    again = text_event(user.user_id, user.fake.issue_reply_token(user.user_id), EMERGENCY,
                       event_id="01HREDELIVERYTEST000000001", redelivery=True)
    user.send(again)
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    assert len(rows(user.client, Message, Message.direction == "in")) == 1


def test_expired_reply_token_falls_back_to_a_push_with_a_retry_key(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    token = user.fake.issue_reply_token(user.user_id)
    user.fake.expire_reply_tokens()
    user.send(text_event(user.user_id, token, EMERGENCY))
    assert user.texts()[0] == kb.message("emergency_medical", "en")
    (reply,) = user.fake.calls_to("/v2/bot/message/reply")
    assert reply.status == 400
    (push,) = user.fake.calls_to("/v2/bot/message/push")
    assert push.status == 200 and push.body["to"] == user.user_id
    first_reply = rows(user.client, Message, Message.direction == "out")[0]
    assert push.headers["X-Line-Retry-Key"] == retry_key(first_reply.id, [])


def test_stale_reply_token_is_not_even_tried(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line(line_reply_token_seconds=0.0)
    user.say(EMERGENCY)
    assert user.texts()[0] == kb.message("emergency_medical", "en")
    assert user.fake.calls_to("/v2/bot/message/reply") == []


def test_rate_limited_push_is_retried_after_retry_after_with_the_same_key(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line(line_reply_token_seconds=0.0)
    user.fake.fail("/v2/bot/message/push", 429, {"message": "The API rate limit has been exceeded."},
                   headers={"Retry-After": "1"})
    user.say(EMERGENCY)
    assert user.texts() == []
    wait_until(user.texts, timeout=15)
    pushes = user.fake.calls_to("/v2/bot/message/push")
    assert [p.status for p in pushes] == [429, 200]
    assert pushes[0].headers["X-Line-Retry-Key"] == pushes[1].headers["X-Line-Retry-Key"]
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    outcomes = [a.outcome for a in rows(user.client, DeliveryAttempt)]
    assert outcomes == ["retry", "sent"]


def test_push_that_timed_out_but_arrived_is_not_shown_twice(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line(line_reply_token_seconds=0.0)
    user.fake.stall("/v2/bot/message/push", 1.5)  # longer than line_timeout: the app gives up, LINE delivers
    user.say(EMERGENCY)
    wait_until(lambda: len(user.fake.calls_to("/v2/bot/message/push")) >= 2, timeout=15)
    statuses = [p.status for p in user.fake.calls_to("/v2/bot/message/push")]
    assert statuses == [200, 409], "the retry used the same X-Line-Retry-Key and LINE dropped it"
    assert user.texts() == [kb.message("emergency_medical", "en"), kb.message("emergency_followup", "en")]
    wait_until(lambda: {m.status for m in rows(user.client, Message, Message.direction == "out")} == {"sent"},
               timeout=5)


def test_server_error_on_push_is_retried(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line(line_reply_token_seconds=0.0)
    user.fake.fail("/v2/bot/message/push", 500, {"message": "Internal error"})
    user.say(EMERGENCY)
    wait_until(user.texts, timeout=15)
    assert user.texts()[0] == kb.message("emergency_medical", "en")


def test_sticker_gets_a_short_reply_in_the_users_language(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.say("Tiếng Việt")
    for content in ({"type": "sticker", "id": "1", "quoteToken": "q1", "packageId": "446", "stickerId": "1988",
                     "stickerResourceType": "STATIC"},
                    {"type": "image", "id": "2", "quoteToken": "q2", "contentProvider": {"type": "line"}},
                    {"type": "location", "id": "3", "latitude": 39.7, "longitude": 141.1}):
        token = user.fake.issue_reply_token(user.user_id)
        user.send(line_event("message", user.user_id, token, message=content))
    assert user.texts() == [kb.message("language_changed", "vi")] + [kb.message("unsupported_message", "vi")] * 3


def test_follow_welcomes_in_the_profile_language_with_a_language_choice(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.fake.profiles[user.user_id] = "pt-BR"
    user.send(line_event("follow", user.user_id, user.fake.issue_reply_token(user.user_id),
                         follow={"isUnblocked": False}))
    assert user.texts() == [kb.message("welcome", "pt")]
    choices = user.quick_replies()
    assert [c["displayText"] for c in choices] == [kb.language_label(code) for code in kb.languages]
    korean = next(c for c in choices if c["displayText"] == kb.language_label("ko"))
    user.send(line_event("postback", user.user_id, user.fake.issue_reply_token(user.user_id),
                         postback={"data": korean["data"]}))
    assert user.texts()[-1] == kb.message("language_changed", "ko")
    user.send(line_event("message", user.user_id, user.fake.issue_reply_token(user.user_id),
                         message={"type": "sticker", "id": "1", "packageId": "1", "stickerId": "1",
                                  "stickerResourceType": "STATIC"}))
    assert user.texts()[-1] == kb.message("unsupported_message", "ko")


def test_unfollow_marks_the_user_unsubscribed_and_follow_again_resubscribes(
    make_line: Callable[..., LineUser],
) -> None:
    user = make_line()
    user.say(EMERGENCY)
    calls = len(user.fake.calls)
    user.send(line_event("unfollow", user.user_id, None))
    assert len(user.fake.calls) == calls, "nothing is sent to a user who left"
    (identity,) = rows(user.client, Identity)
    assert identity.unsubscribed
    user.send(line_event("follow", user.user_id, user.fake.issue_reply_token(user.user_id),
                         follow={"isUnblocked": True}))
    (identity,) = rows(user.client, Identity)
    assert not identity.unsubscribed


def test_rich_menu_staff_button_hands_off_without_the_engine(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.send(line_event("postback", user.user_id, user.fake.issue_reply_token(user.user_id),
                         postback={"data": "consult:staff"}))
    first_line = kb.message("handoff_created", "en", when="").split("\n")[0]
    assert first_line in user.texts()[0]
    assert [e.reason for e in rows(user.client, Escalation)] == ["requested"]


def test_loading_indicator_while_the_assistant_thinks(make_line: Callable[..., LineUser], kb: KnowledgeBase) -> None:
    user = make_line()
    user.say("How do I renew my visa?")
    (loading, *_) = user.fake.calls_to("/v2/bot/chat/loading/start")
    assert loading.body["chatId"] == user.user_id
    assert user.texts() == [kb.message("please_wait", "en")], "Rasa is stopped: the user is told to wait"


def test_many_events_in_one_webhook_are_answered_in_order(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    events = [text_event(user.user_id, user.fake.issue_reply_token(user.user_id), text)
              for text in ("Español", "🙂")]
    assert user.post(*events).status_code == 200
    assert user.texts() == [kb.message("language_changed", "es"), kb.message("empty_prompt", "es")]


def test_rich_menus_one_per_language_and_users_linked_to_theirs(
    make_line: Callable[..., LineUser], kb: KnowledgeBase
) -> None:
    user = make_line()
    user.say("한국어")
    other = LineUser(user.client, user.fake)
    other.say("Bahasa Indonesia")
    settings = user.client.app.state.settings  # type: ignore[attr-defined]
    menus = asyncio.run(create_rich_menus(settings))
    assert set(menus) == set(kb.languages)
    created = [c for c in user.fake.calls if c.path == "/v2/bot/richmenu"]
    assert [c.body["chatBarText"] for c in created] == [kb.message("menu_chat_bar", code) for code in LANGUAGES]
    japanese = created[0].body["areas"]
    assert [a["action"]["data"] for a in japanese] == ["consult:help", "consult:language", "consult:area",
                                                    "consult:staff", "consult:delete_data"]
    assert [a["action"]["displayText"] for a in japanese][2] == kb.message("command_area", "ja")
    assert [a["action"]["displayText"] for a in japanese][3] == kb.message("command_staff", "ja")
    assert sum(a["bounds"]["width"] for a in japanese) <= 2500
    images = [c for c in user.fake.calls if c.path.endswith("/content")]
    assert len(images) == len(LANGUAGES) and all(c.headers["Content-Type"] == "image/png" for c in images)
    aliases = {c.body["richMenuAliasId"]: c.body["richMenuId"] for c in user.fake.calls_to("/richmenu/alias")}
    assert aliases["consult-ko"] == menus["ko"]
    links = {c.body["richMenuId"]: c.body["userIds"] for c in user.fake.calls_to("/richmenu/bulk/link")}
    assert links == {menus["ko"]: [user.user_id], menus["id"]: [other.user_id]}
    assert user.fake.calls_to(f"/v2/bot/user/all/richmenu/{menus['en']}"), "English is the default menu"


def test_plain_rich_menu_image_is_a_valid_small_png() -> None:
    image = plain_image()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) < 1024 * 1024
    width, height = struct.unpack(">II", image[16:24])
    assert (width, height) == (2500, 843)
