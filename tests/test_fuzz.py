"""Property-based fuzzing of the webhooks (issue 7): random and malformed bodies, validly signed or
not, never get a 5xx, never crash the app, and never leave anything stored half-way.

No Rasa: the engine URL is dead (messages wait for it, which is a normal state). The fake LINE and
Telegram APIs receive the answers. The console's forms and pages get random fields and query strings
from a signed-in admin. Example counts: REST 2,000, LINE 1,600, Telegram 1,600, console 2,000 on
SQLite, a quarter of that on PostgreSQL (``FUZZ_SCALE=0.1`` for a quick run).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.db.models import Conversation, Identity, Message
from tests.conftest import line_settings, telegram_settings
from tests.fakes import FakeLine, FakeTelegram

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
SECRET = "telegram-test-secret"


def examples(count: int, factor: float = 1.0) -> int:
    return max(10, int(count * SCALE * factor))


FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        "database": None}

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=200) | st.sampled_from(
    ["", " ", "\x00", "\ud800", "🙂" * 50, "مرحبا", "שלום", "<script>alert(1)</script>", "'; DROP TABLE messages;--",
     "English", "日本語", "/delete_my_data", "/start", "/staff", "b:1:0", "x" * 5000]
)
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | text
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                        max_leaves=12)


Fuzzed = tuple[TestClient, FakeLine, FakeTelegram, float]


@pytest.fixture
def app_with_fakes(database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str
                   ) -> Iterator[Fuzzed]:
    """The app with both platforms on fakes; PostgreSQL runs a quarter of the examples."""
    with FakeLine() as line, FakeTelegram() as telegram:
        client = make_client(database_url, dead_engine_url, **line_settings(line), **telegram_settings(telegram))
        yield client, line, telegram, (1.0 if database_url.startswith("sqlite") else 0.25)
        assert_nothing_half_way(client)


def assert_nothing_half_way(client: TestClient) -> None:
    """Stops the app as an operator does (its worker perhaps mid-round), then checks the database."""
    client.__exit__(None, None, None)
    assistant = client.app.state.assistant  # type: ignore[attr-defined]
    with assistant.sessions() as session:
        orphans = session.scalar(
            select(func.count(Message.id)).outerjoin(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.id.is_(None))
        )
        lost = session.scalar(
            select(func.count(Conversation.id)).outerjoin(Identity, Identity.id == Conversation.identity_id)
            .where(Identity.id.is_(None))
        )
        stuck = session.scalars(select(Message.status).where(Message.status.in_(("processing", "pending")))).all()
        inbound = session.scalar(select(func.count(Message.id)).where(Message.direction == "in"))
    assert orphans == 0 and lost == 0
    assert stuck == [], "a message was left half-way"
    assert inbound, "the fuzzer reached the pipeline"


def ok(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")


# ------------------------------------------------------------------ REST

rest_bodies = st.one_of(
    st.binary(max_size=300),
    anything.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"sender": text | scalars, "message": text | anything},
        optional={"message_id": text | scalars, "metadata": anything | st.fixed_dictionaries({"language": text})},
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"sender": st.text(string.ascii_letters, min_size=1, max_size=8), "message": text})
    .map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


def test_rest_webhook(app_with_fakes: Fuzzed) -> None:
    client, _, _, factor = app_with_fakes

    calls = []

    @settings(max_examples=examples(2000, factor), **FUZZ)
    @given(body=rest_bodies)
    def case(body: bytes) -> None:
        calls.append(1)
        ok(client.post("/webhooks/rest/webhook", content=body, headers={"content-type": "application/json"}))

    case()
    assert len(calls) >= examples(2000, factor)
    ok(client.get("/webhooks/rest/messages", params={"sender": "a", "after": "x"}))


# ------------------------------------------------------------------ LINE

line_user = st.sampled_from(["U" + "0" * 32, "U" + "1" * 32, "C" + "2" * 32]) | text
line_source = st.one_of(
    st.fixed_dictionaries({"type": st.just("user"), "userId": line_user}),
    st.fixed_dictionaries({"type": st.sampled_from(["group", "room"]), "groupId": line_user, "roomId": line_user,
                           "userId": line_user}),
    anything,
)
line_message = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "id": text, "text": text},
                          optional={"quoteToken": text, "emojis": anything, "mention": anything}),
    st.fixed_dictionaries({"type": st.sampled_from(["sticker", "image", "video", "audio", "file", "location",
                                                    "newtype"]), "id": text},
                          optional={"packageId": text, "stickerId": text, "stickerResourceType": text,
                                    "contentProvider": anything, "duration": scalars, "title": text}),
    anything,
)
line_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "follow", "unfollow", "postback", "join", "leave", "memberJoined",
                              "beacon", "accountLink", "things", "videoPlayComplete", "unknownEvent"]) | text,
     "source": line_source},
    optional={
        "mode": st.sampled_from(["active", "standby"]) | text,
        "timestamp": st.integers(min_value=0, max_value=2**45) | scalars,
        "replyToken": text,
        "webhookEventId": st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=30) | text,
        "deliveryContext": st.fixed_dictionaries({"isRedelivery": st.booleans() | scalars}) | anything,
        "message": line_message,
        "postback": st.fixed_dictionaries({"data": text | st.sampled_from(["consult:staff", "consult:help",
                                                                          "consult:delete_data"])}) | anything,
        "follow": anything,
        "unfollow": anything,
    },
)
valid_line_event = st.builds(
    lambda kind, user, words, data, redelivery, event_id: {
        "type": kind, "mode": "active", "timestamp": 1, "source": {"type": "user", "userId": user},
        "webhookEventId": event_id, "deliveryContext": {"isRedelivery": redelivery}, "replyToken": "r" + event_id,
        **({"message": {"type": "text", "id": "1", "text": words, "quoteToken": "q"}} if kind == "message" else {}),
        **({"postback": {"data": data}} if kind == "postback" else {}),
    },
    st.sampled_from(["message", "message", "message", "postback", "follow", "unfollow"]),
    st.sampled_from(["U" + "0" * 32, "U" + "1" * 32]) | st.text(string.ascii_letters, min_size=1, max_size=40),
    text, text | st.sampled_from(["consult:staff", "consult:help", "consult:delete_data"]), st.booleans(),
    st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=30),
)
line_bodies = st.one_of(
    st.fixed_dictionaries({"destination": text, "events": st.lists(valid_line_event, min_size=1, max_size=3)})
    .map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"destination": text, "events": st.lists(valid_line_event, min_size=1, max_size=3)})
    .map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    anything.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"destination": text, "events": st.lists(line_event | anything, max_size=4)})
    .map(lambda v: json.dumps(v).encode()),
)


def test_line_webhook(app_with_fakes: Fuzzed) -> None:
    client, line, _, factor = app_with_fakes

    calls = []

    @settings(max_examples=examples(1400, factor), **FUZZ)
    @given(body=line_bodies, signed=st.booleans(), header=st.booleans())
    def case(body: bytes, signed: bool, header: bool) -> None:
        calls.append(1)
        headers = {"content-type": "application/json"}
        if header:
            headers["x-line-signature"] = line.sign(body) if signed else line.sign(body + b"x")
        response = client.post("/webhooks/line", content=body, headers=headers)
        ok(response)
        if not (signed and header):
            assert response.status_code == 400

    case()

    @settings(max_examples=examples(200, factor), **FUZZ)
    @given(signature=text)
    def wrong(signature: str) -> None:
        calls.append(1)
        body = json.dumps({"destination": "U", "events": []}).encode()
        try:
            headers = {"content-type": "application/json", "x-line-signature": signature}
            response = client.post("/webhooks/line", content=body, headers=headers)
        except (UnicodeEncodeError, ValueError):
            return  # not a header an HTTP client can send
        ok(response)
        assert response.status_code == 400 or signature == line.sign(body)

    wrong()
    assert len(calls) >= examples(1400, factor) + examples(200, factor)


# ------------------------------------------------------------------ Telegram

tg_user = st.fixed_dictionaries(
    {"id": st.integers(min_value=1, max_value=2**40), "is_bot": st.booleans(), "first_name": text},
    optional={"language_code": text | st.sampled_from(["en", "ja", "pt-br", "zh-hans", "vi"])},
)
tg_chat = st.fixed_dictionaries({"id": st.integers(min_value=-(2**40), max_value=2**40),
                                 "type": st.sampled_from(["private", "group", "supergroup", "channel"])})
tg_message = st.fixed_dictionaries(
    {"message_id": st.integers(min_value=0, max_value=2**31), "date": st.integers(min_value=0, max_value=2**32),
     "chat": tg_chat | anything},
    optional={"from": tg_user | anything, "text": text | scalars, "entities": anything, "sticker": anything,
              "photo": anything, "location": anything},
)
tg_callback = st.fixed_dictionaries(
    {"id": text, "from": tg_user, "chat_instance": text},
    optional={"data": text | st.sampled_from(["b:1:0", "b:999:5", "b:x:y", "b::"]), "message": tg_message},
)
tg_update = st.fixed_dictionaries(
    {"update_id": st.integers(min_value=-(2**31), max_value=2**62)},
    optional={"message": tg_message | anything, "edited_message": tg_message | anything,
              "callback_query": tg_callback | anything, "my_chat_member": anything, "channel_post": anything},
)
telegram_bodies = st.one_of(
    st.binary(max_size=200),
    anything.map(lambda v: json.dumps(v).encode()),
    tg_update.map(lambda v: json.dumps(v).encode()),
    tg_update.map(lambda v: json.dumps(v).encode()),
)


def test_telegram_webhook(app_with_fakes: Fuzzed) -> None:
    client, _, _, factor = app_with_fakes

    calls = []

    @settings(max_examples=examples(1600, factor), **FUZZ)
    @given(body=telegram_bodies, secret=st.sampled_from([SECRET, SECRET, SECRET, "wrong", ""]))
    def case(body: bytes, secret: str) -> None:
        calls.append(1)
        headers = {"content-type": "application/json", "x-telegram-bot-api-secret-token": secret}
        response = client.post("/webhooks/telegram", content=body, headers=headers)
        ok(response)
        if secret != SECRET:
            assert response.status_code == 403

    case()
    assert len(calls) >= examples(1600, factor)


# ------------------------------------------------------------------ console forms

CONSOLE_FIELDS = ["csrf_token", "login", "password", "next", "text_ja", "translation", "assignee", "question_ja",
                  "answer_ja", "title", "display_name", "role", "label", "state", "template", "free_text", "areas",
                  "language", "platform", "field_area", "field_time", "field_name", "field_address",
                  "field_map_url", "field_place", "page", "status", "urgent", "age", "topic", "mine"]
form_values = text | st.sampled_from(["on", "off", "admin", "staff", "earthquake", "checkin", "shelter_opened",
                                      "1", "0", "-1", "99999999999", "en", "ja-easy", "line", "telegram",
                                      "https://example.jp/map", "宮古市", "active", "all", "24h"])
console_form = st.lists(st.tuples(st.sampled_from(CONSOLE_FIELDS) | text, form_values), max_size=10)


def _console_paths(client: TestClient, ids: dict[str, str]) -> tuple[list[str], list[str]]:
    """Every console GET and POST path, ``{…}`` filled with an existing id or a random-looking one."""
    from tests.test_console import console_routes

    gets, posts = [], []
    for method, path in console_routes(client, ids):
        if not path.startswith("/console") or path in ("/console/login", "/console/logout"):
            continue  # signing out would end the fuzzing session
        (posts if method == "POST" else gets).append(path)
    return gets, posts


def test_console_forms(database_url: str, make_client: Callable[..., TestClient], dead_engine_url: str) -> None:
    """A signed-in admin posts random forms (valid CSRF token or not) to every console form and opens
    every page with random query strings: never a 5xx, and nothing is stored half-way."""
    import re

    from bot import staff as staff_accounts
    from bot.db.models import Broadcast, BroadcastDelivery, CannedReply, Escalation

    with FakeTelegram() as telegram:
        client = make_client(database_url, dead_engine_url, **telegram_settings(telegram))
        factor = 1.0 if database_url.startswith("sqlite") else 0.25
        assistant = client.app.state.assistant  # type: ignore[attr-defined]
        with assistant.sessions() as session:
            staff_accounts.create_staff(session, "fuzz", "correct horse battery staple", role="admin")
            session.commit()
        client.post("/webhooks/rest/webhook", json={"sender": "fuzz-user", "message": "I want to talk to staff"})
        login_page = client.get("/console/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login_page)
        assert token
        signed_in = client.post("/console/login", follow_redirects=False, data={
            "login": "fuzz", "password": "correct horse battery staple", "csrf_token": token.group(1)})
        assert signed_in.status_code == 303
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/queue").text)
        assert csrf
        with assistant.sessions() as session:
            case_id = session.scalar(select(func.max(Escalation.id))) or 1
        ids = {"case_id": str(case_id), "canned_id": "1", "suggestion_id": "1", "alert_id": "1"}
        gets, posts = _console_paths(client, ids)
        assert len(posts) >= 15 and len(gets) >= 10
        calls: list[int] = []

        @settings(max_examples=examples(2000, factor), **FUZZ)
        @given(path=st.sampled_from(posts), form=console_form, with_token=st.booleans(), query=console_form,
               page=st.sampled_from(gets))
        def case(path: str, form: list[tuple[str, str]], with_token: bool, query: list[tuple[str, str]],
                 page: str) -> None:
            pairs = [(k, v) for k, v in form if k != "csrf_token"]
            if with_token:
                pairs.append(("csrf_token", csrf.group(1)))
            body = "&".join(f"{quote(k.encode('utf-8', 'surrogatepass'), safe='')}="
                            f"{quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in pairs)
            response = client.post(path, content=body, follow_redirects=False,
                                   headers={"content-type": "application/x-www-form-urlencoded"})
            assert response.status_code < 500, (path, response.text[:300])
            calls.append(response.status_code)
            if not with_token:
                assert response.status_code == 403, path
            shown = client.get(page, params=[(k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                                              v.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
                                             for k, v in query], follow_redirects=False)
            assert shown.status_code < 500, (page, shown.text[:300])

        case()
        assert len(calls) >= examples(2000, factor)
        assert {200, 303} & set(calls) and 400 in calls and 403 in calls, sorted(set(calls))
        with assistant.sessions() as session:
            for broadcast in session.scalars(select(Broadcast)):
                jobs = session.scalar(select(func.count(BroadcastDelivery.id))
                                      .where(BroadcastDelivery.broadcast_id == broadcast.id))
                assert broadcast.status in ("queued", "sending", "done", "refused")
                assert jobs or broadcast.status in ("done", "refused"), "an alert was queued without its deliveries"
            for canned in session.scalars(select(CannedReply)):
                assert canned.title.strip() and canned.text_ja.strip()
        assert_nothing_half_way(client)
