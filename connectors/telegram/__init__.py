"""The Telegram channel (Bot API, python-telegram-bot 22).

``POST /webhooks/telegram`` checks ``X-Telegram-Bot-Api-Secret-Token`` (the ``secret_token``
given to setWebhook, see ``python -m connectors.telegram set-webhook``) before reading the body;
the update is stored (deduplicated by ``update_id``), the webhook answers 200, and the answer is
worked out afterwards and sent with sendMessage. Without a public address, long polling
(``CONSULT_TELEGRAM_POLLING=true``) feeds the same handler. Suggestions are inline keyboards
whose callbacks are answered (answerCallbackQuery); a button's callback data refers to the
stored message and button (Telegram allows 64 bytes), so payloads of any length work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from bot.pipeline import Assistant
from bot.ports import DeliveryError, Inbound, Reply
from bot.settings import Settings

PLATFORM = "telegram"
MAX_BODY = 1024 * 1024
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64
WAIT_IN_PLACE = 5.0
"""A RetryAfter up to this many seconds is waited out at once; a longer one goes to the retry worker."""
COMMANDS = {
    "start": "welcome",
    "help": "help",
    "language": "language_menu",
    "area": "area_menu",
    "staff": "staff",
    "delete_my_data": "delete_data",
}
"""Bot commands and the inbound kind each one is."""
POLL_TIMEOUT = 25
ALLOWED_UPDATES = ("message", "callback_query", "my_chat_member")
MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
"""Transport failures after the request went out: Telegram may have shown the message (it has no retry key)."""

log = logging.getLogger(__name__)


def seconds(value: int | float | dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def callback_data(reply: Reply, index: int) -> str:
    """What a button sends back: a reference to the stored button, or the payload when nothing is stored."""
    if reply.message_id is not None:
        return f"b:{reply.message_id}:{index}"
    return reply.buttons[index].payload.encode()[:MAX_CALLBACK_DATA].decode(errors="ignore")


def keyboard(reply: Reply) -> InlineKeyboardMarkup | None:
    if not reply.buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(button.title, callback_data=callback_data(reply, i))]
         for i, button in enumerate(reply.buttons)]
    )


class TelegramConnector:
    """Delivery through the real SDK; ``base_url`` points it at Telegram or at a fake."""

    platform = PLATFORM

    def __init__(self, token: str, api_url: str, timeout: float) -> None:
        request = HTTPXRequest(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                               pool_timeout=timeout)
        updates = HTTPXRequest(connect_timeout=timeout, read_timeout=POLL_TIMEOUT + timeout,
                               write_timeout=timeout, pool_timeout=timeout)
        self.bot = Bot(token, base_url=api_url.rstrip("/") + "/bot", request=request, get_updates_request=updates)
        self._ready = False
        self._lock = asyncio.Lock()

    async def api(self) -> Bot:
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    await self.bot.initialize()
                    self._ready = True
        return self.bot

    async def close(self) -> None:
        if self._ready:
            await self.bot.shutdown()
            self._ready = False

    async def deliver(self, address: str, replies: Sequence[Reply], reply_context: dict[str, str]) -> None:
        for index, reply in enumerate(replies):
            await self._send(address, reply, delivered=index)

    async def _send(self, address: str, reply: Reply, delivered: int) -> None:
        text = reply.text if len(reply.text) <= MAX_TEXT else reply.text[: MAX_TEXT - 1] + "…"
        for attempt in range(2):
            try:
                bot = await self.api()
                await bot.send_message(chat_id=int(address), text=text, reply_markup=keyboard(reply))
                return
            except RetryAfter as exc:
                wait = seconds(exc.retry_after)
                if attempt == 0 and wait <= WAIT_IN_PLACE:
                    log.info("Telegram asked to wait %.1f s; waiting", wait)
                    await asyncio.sleep(wait)
                    continue
                raise DeliveryError("Telegram flood control", delivered=delivered, retry_after=wait) from exc
            except Forbidden as exc:  # the user blocked the bot (or deleted their account)
                raise DeliveryError("Telegram: forbidden", delivered=delivered, unsubscribed=True) from exc
            except BadRequest as exc:
                raise DeliveryError(f"Telegram bad request: {exc.message[:80]}", delivered=delivered,
                                    permanent=True) from exc
            except (NetworkError, TelegramError) as exc:  # TimedOut is a NetworkError
                uncertain = isinstance(exc.__cause__, MAYBE_SENT)
                detail = type(exc.__cause__).__name__ if uncertain else type(exc).__name__
                raise DeliveryError(f"Telegram {detail}", delivered=delivered, uncertain=uncertain) from exc

    async def thinking(self, address: str) -> None:
        bot = await self.api()
        await bot.send_chat_action(chat_id=int(address), action="typing")

    async def profile_language(self, address: str) -> str | None:
        return None  # every update carries the user's language_code

    async def language_changed(self, address: str, language: str) -> None:
        return None  # the command menu follows the user's Telegram language (setMyCommands per language)

    async def answer_callback(self, callback_id: str) -> None:
        try:
            bot = await self.api()
            await bot.answer_callback_query(callback_id)
        except TelegramError as exc:
            log.info("answerCallbackQuery failed: %s", type(exc).__name__)


class NotAnUpdate(ValueError):
    """An update that parsed but lacks what its kind requires (e.g. a chat member change without members)."""


def _command(text: str) -> str | None:
    if not text.startswith("/"):
        return None
    name = text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if len(text) > 1 else ""
    return COMMANDS.get(name)


def to_inbound(update: Update, assistant: Assistant) -> tuple[Inbound | None, str | None]:
    """The update as the core's message (or None), and the callback query to answer (or None)."""
    event_id = str(update.update_id)
    if update.callback_query is not None:
        query = update.callback_query
        chat = query.message.chat.id if query.message is not None else query.from_user.id
        data = query.data or ""
        text = data
        if data.startswith("b:"):
            with contextlib.suppress(ValueError):
                _, message_id, index = data.split(":")
                text = assistant.button_payload(PLATFORM, str(chat), int(message_id), int(index)) or ""
        inbound = Inbound(platform=PLATFORM, platform_user_id=str(chat), text=text, event_id=event_id,
                          language_hint=query.from_user.language_code)
        return (inbound if text else None), query.id
    member = update.my_chat_member
    if member is not None:
        status = member.new_chat_member.status
        if status in ("kicked", "left"):
            return Inbound(platform=PLATFORM, platform_user_id=str(member.chat.id), text="", kind="unsubscribe",
                           event_id=event_id), None
        return None, None
    message = update.message
    if message is None or message.chat.type != "private":
        return None, None  # edits, channel posts, groups: not a consultation
    hint = message.from_user.language_code if message.from_user is not None else None
    common: dict[str, Any] = {"platform": PLATFORM, "platform_user_id": str(message.chat.id), "event_id": event_id,
                              "language_hint": hint}
    if message.text is None:
        return Inbound(text="", kind="unsupported", **common), None  # sticker, photo, voice, file, location
    kind = _command(message.text)
    if kind == "area_menu":  # "/area 一関市" carries the answer
        return Inbound(text=message.text.replace("\x00", ""), kind=kind, **common), None
    if kind is not None:
        return Inbound(text="", kind=kind, **common), None
    return Inbound(text=message.text.replace("\x00", ""), **common), None


@dataclass
class TelegramChannel:
    """The Telegram webhook (or long polling) and connector, built from settings."""

    telegram: TelegramConnector
    secret_token: str
    polling: bool = False
    _poller: asyncio.Task[None] | None = field(default=None, repr=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramChannel:
        os.environ.setdefault("PTB_TIMEDELTA", "true")  # durations as timedelta (PTB 22's announced default)
        for name in ("httpx", "httpcore", "telegram"):  # the bot token is part of every Bot API URL
            logging.getLogger(name).setLevel(logging.WARNING)
        return cls(
            telegram=TelegramConnector(settings.telegram_bot_token.get_secret_value(), settings.telegram_api_url,
                                       settings.telegram_timeout),
            secret_token=settings.telegram_secret_token.get_secret_value(),
            polling=settings.telegram_polling,
        )

    @property
    def connector(self) -> TelegramConnector:
        return self.telegram

    def accept(self, assistant: Assistant, update: Update) -> tuple[int | None, str | None]:
        """Store one update. Returns the message id to answer (None: duplicate or nothing to answer)
        and the callback query to acknowledge."""
        try:
            inbound, callback_id = to_inbound(update, assistant)
        except (AttributeError, TypeError, ValueError) as exc:
            raise NotAnUpdate(type(exc).__name__) from exc
        if inbound is None:
            return None, callback_id
        message_id, duplicate = assistant.store_inbound(inbound)
        if duplicate:
            log.info("Telegram update=%s already stored as message=%s", update.update_id, message_id)
            return None, callback_id
        return message_id, callback_id

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self, assistant: Assistant) -> None:
        if self.polling:
            self._poller = asyncio.create_task(self._poll(assistant))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        await self.telegram.close()

    async def _poll(self, assistant: Assistant) -> None:
        """Long polling (getUpdates) for operators without a public address."""
        offset = 0
        bot = None
        while bot is None:
            try:
                bot = await self.telegram.api()
                await bot.delete_webhook()  # getUpdates is refused while a webhook is set
            except TelegramError as exc:
                bot = None
                log.warning("Telegram not reachable for polling (%s); retrying", type(exc).__name__)
                await asyncio.sleep(5)
        log.info("Telegram long polling started")
        while True:
            try:
                updates = await bot.get_updates(offset=offset, timeout=POLL_TIMEOUT,
                                                allowed_updates=list(ALLOWED_UPDATES))
            except RetryAfter as exc:
                await asyncio.sleep(seconds(exc.retry_after))
                continue
            except TelegramError as exc:
                log.warning("getUpdates failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2)
                continue
            for update in updates:
                offset = max(offset, update.update_id + 1)
                try:
                    message_id, callback_id = self.accept(assistant, update)
                except NotAnUpdate:
                    log.warning("Telegram update=%s skipped: not a complete update", update.update_id)
                    continue
                self._spawn(self._after(assistant, message_id, callback_id))

    def router(self, assistant: Assistant) -> APIRouter:
        routes = APIRouter()

        @routes.post("/webhooks/telegram")
        async def webhook(request: Request, background: BackgroundTasks) -> JSONResponse:
            given = request.headers.get("x-telegram-bot-api-secret-token", "")
            if not self.secret_token:
                return JSONResponse({"error": "the Telegram webhook secret is not configured"}, status_code=403)
            if not hmac.compare_digest(given.encode(), self.secret_token.encode()):
                log.warning("Telegram webhook with a wrong secret token refused")
                return JSONResponse({"error": "wrong or missing X-Telegram-Bot-Api-Secret-Token"}, status_code=403)
            raw = await request.body()
            if len(raw) > MAX_BODY:
                return JSONResponse({"error": "the request body is too large"}, status_code=413)
            try:
                data = json.loads(raw)
                if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                    raise ValueError("no update_id")
                update = Update.de_json(data, self.telegram.bot)
            except (ValueError, TypeError, KeyError, AttributeError):
                return JSONResponse({"error": "the body is not a Telegram update (JSON with an update_id)"},
                                    status_code=400)
            try:
                message_id, callback_id = self.accept(assistant, update)
            except NotAnUpdate:
                return JSONResponse({"error": "the update lacks fields its kind requires"}, status_code=400)
            if message_id is not None or callback_id is not None:
                background.add_task(self._after, assistant, message_id, callback_id)
            return JSONResponse({})

        return routes


    async def _after(self, assistant: Assistant, message_id: int | None, callback_id: str | None) -> None:
        """After the platform has its 200: acknowledge the button, then answer."""
        if callback_id is not None:
            await self.telegram.answer_callback(callback_id)
        if message_id is None:
            return
        try:
            await assistant.respond(message_id)
        except Exception:  # stored: the retry worker answers it
            log.exception("answering message=%s failed; the worker will retry", message_id)
