"""Fakes of the LINE Messaging API and the Telegram Bot API: real HTTP servers on 127.0.0.1.

Each runs an aiohttp application in its own thread and event loop, records every call, and can
be told to fail: ``fail(path, status, ...)`` answers the next calls to a path with an error
(429 with Retry-After, 500), ``stall(path, seconds)`` makes them time out. The LINE fake keeps
reply tokens like LINE does: single-use, and ``expire_reply_tokens()`` makes every issued one
invalid (LINE answers 400 "Invalid reply token"). The real SDKs talk to them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 200
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int
    after: int = 0


@dataclass
class FakeServer:
    """The common part: a thread with an aiohttp app, the call log and scripted failures."""

    port: int = field(default_factory=free_port)
    calls: list[Call] = field(default_factory=list)
    _failures: dict[str, list[_Failure]] = field(default_factory=dict)
    _stalls: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, path: str, status: int, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, times: int = 1, after: int = 0) -> None:
        """Answer the next ``times`` calls to ``path`` with this error, once ``after`` calls went through."""
        with self._lock:
            self._failures.setdefault(path, []).append(_Failure(status, body or {}, headers or {}, times, after))

    def stall(self, path: str, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._stalls.setdefault(path, []).extend([seconds] * times)

    def _scripted(self, path: str) -> tuple[float, _Failure | None]:
        with self._lock:
            stall = self._stalls[path].pop(0) if self._stalls.get(path) else 0.0
            failures = self._failures.get(path) or []
            if not failures:
                return stall, self._chaos(path)
            failure = failures[0]
            if failure.after > 0:
                failure.after -= 1
                return stall, self._chaos(path)
            failure.times -= 1
            if failure.times <= 0:
                failures.pop(0)
            return stall, failure

    def calls_to(self, path_end: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path.endswith(path_end)]

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    # ---------------------------------------------------------------- serving

    def app(self) -> web.Application:
        raise NotImplementedError

    def __enter__(self) -> FakeServer:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            started.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---------------------------------------------------------------- random failures (alerts bench)

    def chaos(self, rate: float, paths: tuple[str, ...], seed: int = 0, retry_after: int = 1,
              statuses: tuple[int, ...] = (429, 500)) -> None:
        """Answer ``rate`` (0..1) of the calls to ``paths`` with one of ``statuses``, at random (seeded)."""
        with self._lock:
            self._chaos_rate = rate
            self._chaos_paths = paths
            self._chaos_random = random.Random(seed)
            self._chaos_retry_after = retry_after
            self._chaos_statuses = statuses

    def _chaos(self, path: str) -> _Failure | None:
        """Called with the lock held."""
        rate = getattr(self, "_chaos_rate", 0.0)
        if not rate or path not in self._chaos_paths or self._chaos_random.random() >= rate:
            return None
        status = self._chaos_random.choice(self._chaos_statuses)
        return self._chaos_failure(status)

    def _chaos_failure(self, status: int) -> _Failure:
        headers = {"Retry-After": str(self._chaos_retry_after)} if status == 429 else {}
        return _Failure(status, {"message": "injected failure"}, headers, 1)

    def rate(self, path_end: str, ok_only: bool = True) -> float:
        """Calls per second to a path, first call to last (only answered 200 when ``ok_only``)."""
        stamps = sorted(c.at for c in self.calls_to(path_end) if c.status == 200 or not ok_only)
        if len(stamps) < 2:
            return 0.0
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])


# ==================================================================== LINE


@dataclass
class FakeLine(FakeServer):
    """The LINE Messaging API endpoints the connector uses, with LINE's reply-token rules."""

    channel_secret: str = "line-test-channel-secret"
    access_token: str = "line-test-access-token"
    profiles: dict[str, str] = field(default_factory=dict)
    """user id → profile language (``ja``, ``pt-BR``...)."""
    _tokens: dict[str, str] = field(default_factory=dict)
    _used_retry_keys: set[str] = field(default_factory=set)
    _expired: bool = False
    blocked_users: set[str] = field(default_factory=set)
    """Users who blocked the account: a push to them is answered 403, a multicast skips them."""
    quota_limit: int | None = None
    """The monthly message quota (None: unlimited, type "none")."""
    quota_used: int = 0
    received: Counter[str] = field(default_factory=Counter)
    """Alert deliveries per user (push and multicast that LINE accepted)."""
    late_failure_rate: float = 0.0
    """Part of push/multicast calls that are delivered and then answered 500 (a lost answer)."""
    late_failures: int = 0
    aliases: dict[str, str] = field(default_factory=dict)
    """Rich menu alias → rich menu id."""
    user_menus: dict[str, str] = field(default_factory=dict)
    """User id → the rich menu linked to them (one by one or in bulk)."""

    def issue_reply_token(self, user_id: str) -> str:
        token = uuid.uuid4().hex
        with self._lock:
            self._tokens[token] = user_id
        return token

    def expire_reply_tokens(self) -> None:
        with self._lock:
            self._expired = True
            self._tokens.clear()

    def sign(self, body: bytes) -> str:
        digest = hmac.new(self.channel_secret.encode(), body, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def delivered(self, user_id: str) -> list[dict[str, Any]]:
        """Every message the user has been shown, in order (replies, pushes and multicasts LINE accepted)."""
        shown: list[dict[str, Any]] = []
        for call in list(self.calls):
            if call.status != 200:
                continue
            reply = call.path == "/v2/bot/message/reply" and call.body.get("_user") == user_id
            push = call.path == "/v2/bot/message/push" and call.body.get("to") == user_id
            multicast = call.path == "/v2/bot/message/multicast" and user_id in (call.body.get("to") or ())
            if reply or push or multicast:
                shown.extend(call.body["messages"])
        return shown

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/bot/message/reply", self._reply)
        app.router.add_post("/v2/bot/message/push", self._push)
        app.router.add_post("/v2/bot/message/multicast", self._multicast)
        app.router.add_get("/v2/bot/message/quota", self._quota)
        app.router.add_get("/v2/bot/message/quota/consumption", self._quota_consumption)
        app.router.add_post("/v2/bot/chat/loading/start", self._loading)
        app.router.add_get("/v2/bot/profile/{user_id}", self._profile)
        app.router.add_post("/v2/bot/richmenu/alias", self._alias_create)
        app.router.add_get("/v2/bot/richmenu/alias/{alias}", self._alias_get)
        app.router.add_post("/v2/bot/richmenu/alias/{alias}", self._alias_update)
        app.router.add_post("/v2/bot/user/{user_id}/richmenu/{menu_id}", self._link)
        app.router.add_post("/v2/bot/richmenu/bulk/link", self._bulk_link)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app

    async def _begin(self, request: web.Request) -> tuple[Call, web.Response | None]:
        raw = await request.read()
        body = json.loads(raw) if raw and request.content_type == "application/json" else {}
        call = Call(request.method, request.path, dict(request.headers), body)
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            call.status = 401
            self._record(call)
            return call, web.json_response({"message": "Authentication failed"}, status=401)
        stall, failure = self._scripted(request.path)
        if stall:
            await asyncio.sleep(stall)
        if failure is not None:
            call.status = failure.status
            self._record(call)
            return call, web.json_response(failure.body, status=failure.status, headers=failure.headers)
        return call, None

    async def _reply(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            user = self._tokens.pop(call.body.get("replyToken", ""), None)
        if user is None:
            call.status = 400
            self._record(call)
            return web.json_response({"message": "Invalid reply token"}, status=400)
        call.body["_user"] = user
        self._record(call)
        return web.json_response({"sentMessages": [{"id": str(i)} for i, _ in enumerate(call.body["messages"])]})

    async def _push(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        key = request.headers.get("X-Line-Retry-Key")
        with self._lock:
            seen = key in self._used_retry_keys if key else False
            if key:
                self._used_retry_keys.add(key)
        if seen:
            call.status = 409
            self._record(call)
            return web.json_response({"message": "The retry key is already accepted"}, status=409,
                                     headers={"x-line-accepted-request-id": "accepted"})
        if call.body.get("to") in self.blocked_users:
            call.status = 403
            self._record(call)
            return web.json_response({"message": "The user blocked the account"}, status=403)
        self._record(call)
        self._accept([str(call.body.get("to"))])
        if self._late_failure():
            return web.json_response({"message": "injected failure after delivery"}, status=500)
        return web.json_response({"sentMessages": [{"id": str(i)} for i, _ in enumerate(call.body["messages"])]})

    async def _loading(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        self._record(call)
        return web.json_response({}, status=202)

    async def _profile(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        self._record(call)
        user_id = request.match_info["user_id"]
        body: dict[str, Any] = {"displayName": "Test user", "userId": user_id}
        if user_id in self.profiles:
            body["language"] = self.profiles[user_id]
        return web.json_response(body)

    async def _alias_create(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            exists = call.body["richMenuAliasId"] in self.aliases
            if not exists:
                self.aliases[call.body["richMenuAliasId"]] = call.body["richMenuId"]
        call.status = 400 if exists else 200
        self._record(call)
        if exists:
            return web.json_response({"message": "conflict richmenu alias id"}, status=400)
        return web.json_response({})

    async def _alias_update(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            self.aliases[request.match_info["alias"]] = call.body["richMenuId"]
        self._record(call)
        return web.json_response({})

    async def _alias_get(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            menu = self.aliases.get(request.match_info["alias"])
        call.status = 200 if menu else 404
        self._record(call)
        if menu is None:
            return web.json_response({"message": "richmenu alias not found"}, status=404)
        return web.json_response({"richMenuAliasId": request.match_info["alias"], "richMenuId": menu})

    async def _link(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            self.user_menus[request.match_info["user_id"]] = request.match_info["menu_id"]
        self._record(call)
        return web.json_response({})

    async def _bulk_link(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        with self._lock:
            for user_id in call.body["userIds"]:
                self.user_menus[user_id] = call.body["richMenuId"]
        self._record(call)
        return web.json_response({}, status=202)

    async def _other(self, request: web.Request) -> web.Response:
        """Rich menus and the rest: recorded, answered with a plausible body."""
        call, error = await self._begin(request)
        if error is not None:
            return error
        self._record(call)
        if request.path == "/v2/bot/richmenu":
            return web.json_response({"richMenuId": f"richmenu-{uuid.uuid4().hex}"})
        return web.json_response({})

    # ---------------------------------------------------------------- alerts: multicast and quota

    def _accept(self, users: list[str]) -> None:
        with self._lock:
            for user in users:
                self.received[user] += 1
            self.quota_used += len(users)

    def _late_failure(self) -> bool:
        if not self.late_failure_rate:
            return False
        with self._lock:
            late = getattr(self, "_chaos_random", random.Random(0)).random() < self.late_failure_rate
            self.late_failures += late
            return late

    async def _multicast(self, request: web.Request) -> web.Response:
        """Up to 500 user ids; a repeated X-Line-Retry-Key is answered 409 and not delivered again."""
        call, error = await self._begin(request)
        if error is not None:
            return error
        to = [str(user) for user in call.body.get("to") or []]
        if not to or len(to) > 500:
            call.status = 400
            self._record(call)
            return web.json_response({"message": "The property, 'to', must be 1 to 500 user ids"}, status=400)
        key = request.headers.get("X-Line-Retry-Key")
        with self._lock:
            seen = key in self._used_retry_keys if key else False
            if key:
                self._used_retry_keys.add(key)
        if seen:
            call.status = 409
            self._record(call)
            return web.json_response({"message": "The retry key is already accepted"}, status=409,
                                     headers={"x-line-accepted-request-id": "accepted"})
        self._record(call)
        self._accept([user for user in to if user not in self.blocked_users])
        if self._late_failure():
            return web.json_response({"message": "injected failure after delivery"}, status=500)
        return web.json_response({})

    async def _quota(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        self._record(call)
        if self.quota_limit is None:
            return web.json_response({"type": "none"})
        return web.json_response({"type": "limited", "value": self.quota_limit})

    async def _quota_consumption(self, request: web.Request) -> web.Response:
        call, error = await self._begin(request)
        if error is not None:
            return error
        self._record(call)
        return web.json_response({"totalUsage": self.quota_used})


def line_event(kind: str, user_id: str, token: str | None, event_id: str | None = None, redelivery: bool = False,
               **extra: Any) -> dict[str, Any]:
    """A webhook event as LINE sends it."""
    event: dict[str, Any] = {
        "type": kind,
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user_id},
        "webhookEventId": event_id or uuid.uuid4().hex.upper()[:26],
        "deliveryContext": {"isRedelivery": redelivery},
    }
    if token is not None:
        event["replyToken"] = token
    event.update(extra)
    return event


def text_event(user_id: str, token: str, text: str, **kw: Any) -> dict[str, Any]:
    return line_event("message", user_id, token,
                      message={"type": "text", "id": uuid.uuid4().hex[:16], "text": text, "quoteToken": "q"}, **kw)


def webhook_body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"destination": "Ubot", "events": list(events)}, ensure_ascii=False).encode()


# ==================================================================== Telegram


@dataclass
class FakeTelegram(FakeServer):
    """The Bot API methods the connector uses, under ``/bot<token>/<method>``."""

    token: str = "123456:telegram-test-token"
    updates: list[dict[str, Any]] = field(default_factory=list)
    """Handed out by getUpdates (long polling)."""
    _message_ids: int = 0
    blocked_chats: set[int] = field(default_factory=set)
    """Chats whose user blocked the bot: sendMessage answers 403."""
    received: Counter[int] = field(default_factory=Counter)
    """Messages per chat that sendMessage accepted."""

    @property
    def base_url(self) -> str:
        return f"{self.url}/bot"

    def method_calls(self, method: str) -> list[Call]:
        return [call for call in self.calls_to(f"/{method}") if call.status == 200]

    def delivered(self, chat_id: int | str) -> list[dict[str, Any]]:
        """Messages the user has been shown: successful sendMessage calls to that chat."""
        return [call.body for call in self.method_calls("sendMessage") if str(call.body.get("chat_id")) == str(chat_id)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._method)
        return app

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            body = await request.json()
        else:
            form = await request.post()
            body = {}
            for key, value in form.items():
                text = str(value)
                try:
                    body[key] = json.loads(text)
                except ValueError:
                    body[key] = text
        call = Call(request.method, f"/{method}", dict(request.headers), body)
        if request.match_info["token"] != self.token:
            call.status = 401
            self._record(call)
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        stall, failure = self._scripted(f"/{method}")
        if stall:
            await asyncio.sleep(stall)
        if failure is None and method == "sendMessage" and int(body.get("chat_id") or 0) in self.blocked_chats:
            failure = _Failure(403, {"ok": False, "error_code": 403,
                                     "description": "Forbidden: bot was blocked by the user"}, {}, 1)
        if failure is not None:
            call.status = failure.status
            self._record(call)
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        self._record(call)
        handler: Callable[[dict[str, Any]], Any] = getattr(self, f"_m_{method}", lambda _body: True)
        result = handler(body)
        if asyncio.iscoroutine(result):
            result = await result
        return web.json_response({"ok": True, "result": result})

    def _m_getMe(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": 123456, "is_bot": True, "first_name": "Consult", "username": "consult_test_bot"}

    def _m_sendMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._message_ids += 1
            message_id = self._message_ids
            self.received[int(body["chat_id"])] += 1
        return {"message_id": message_id, "date": int(time.time()),
                "chat": {"id": int(body["chat_id"]), "type": "private"}, "text": body.get("text", "")}

    def _chaos_failure(self, status: int) -> _Failure:
        if status == 429:
            return _Failure(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after "
                                  f"{self._chaos_retry_after}", "parameters": {"retry_after": self._chaos_retry_after}},
                            {"Retry-After": str(self._chaos_retry_after)}, 1)
        return _Failure(status, {"ok": False, "error_code": status, "description": "Internal Server Error"}, {}, 1)

    async def _m_getUpdates(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(body.get("offset") or 0)
        for _ in range(20):
            with self._lock:
                pending = [u for u in self.updates if u["update_id"] >= offset]
            if pending:
                return pending
            await asyncio.sleep(0.05)
        return []


def telegram_user(user_id: int, language_code: str | None = "en") -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": "Test"}
    if language_code:
        user["language_code"] = language_code
    return user


def telegram_message_update(update_id: int, user_id: int, text: str | None, language_code: str | None = "en",
                            **content: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": update_id,
        "date": int(time.time()),
        "chat": {"id": user_id, "type": "private"},
        "from": telegram_user(user_id, language_code),
    }
    if text is not None:
        message["text"] = text
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    message.update(content)
    return {"update_id": update_id, "message": message}


def telegram_callback_update(update_id: int, user_id: int, data: str, language_code: str | None = "en"
                             ) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cb-{update_id}",
            "from": telegram_user(user_id, language_code),
            "chat_instance": "ci",
            "data": data,
            "message": {"message_id": 1, "date": int(time.time()), "chat": {"id": user_id, "type": "private"},
                        "text": "..."},
        },
    }
