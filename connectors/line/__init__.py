"""The LINE channel (Messaging API, line-bot-sdk 3).

``POST /webhooks/line``: the SDK's parser checks ``X-Line-Signature`` (HMAC-SHA256 of the raw body
with the channel secret) before anything is read; a missing or wrong signature gets 400 and
nothing is stored or logged of the body. Every event is stored (deduplicated by
``webhookEventId``), the webhook answers 200, and the answer is worked out afterwards
(``Assistant.respond``) and delivered by :class:`LineConnector`: the reply token while it is
fresh and unused, otherwise a push message with an ``X-Line-Retry-Key`` derived from the stored
reply, so a retried push is never shown twice.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    Configuration,
    PostbackAction,
    PushMessageRequest,
    QuickReply,
    QuickReplyItem,
    ReplyMessageRequest,
    ShowLoadingAnimationRequest,
    TextMessage,
)
from linebot.v3.messaging.exceptions import ApiException
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import (
    FollowEvent,
    MessageEvent,
    PostbackEvent,
    TextMessageContent,
    UnfollowEvent,
)

from bot.pipeline import Assistant
from bot.ports import DeliveryError, Inbound, Reply
from bot.settings import Settings

PLATFORM = "line"
MAX_BODY = 1024 * 1024
MAX_MESSAGES = 5
"""LINE takes at most five messages per reply or push."""
MAX_TEXT = 5000
MAX_LABEL = 20
MAX_QUICK_REPLIES = 13
MAX_POSTBACK_DATA = 300
LOADING_SECONDS = 20
COMMANDS = {"consult:help": "help", "consult:language": "language_menu", "consult:area": "area_menu",
            "consult:staff": "staff", "consult:delete_data": "delete_data"}
"""Postback data of the rich menu's areas, as inbound kinds."""
_RETRY_KEYS = uuid.UUID("4f9a3c1e-7d52-4b8e-9a61-2c0e5b7d8f13")

log = logging.getLogger(__name__)


def menu_alias(language: str) -> str:
    """The rich menu alias of a language (``python -m connectors.line rich-menus`` creates them)."""
    return f"consult-{language}"


def retry_key(message_id: int | None, texts: Sequence[str]) -> str:
    """The same key for every attempt to push the same stored replies (LINE drops the repeats)."""
    name = f"message:{message_id}" if message_id is not None else "texts:" + "\x00".join(texts)
    return str(uuid.uuid5(_RETRY_KEYS, name))


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def to_line_message(reply: Reply) -> TextMessage:
    """One reply as a LINE text message; its buttons become quick replies (postback actions)."""
    text = reply.text if len(reply.text) <= MAX_TEXT else reply.text[: MAX_TEXT - 1] + "…"
    quick_reply = None
    if reply.buttons:
        items = [
            QuickReplyItem(
                action=PostbackAction(
                    label=_label(button.title),
                    data=button.payload[:MAX_POSTBACK_DATA],
                    displayText=button.title[:300],
                )
            )
            for button in reply.buttons[:MAX_QUICK_REPLIES]
        ]
        quick_reply = QuickReply(items=items)
    return TextMessage(text=text, quickReply=quick_reply)


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class LineConnector:
    """Delivery to LINE through the real SDK (``Configuration(host=...)`` points it anywhere)."""

    platform = PLATFORM

    def __init__(self, access_token: str, api_url: str, timeout: float, reply_token_seconds: float) -> None:
        self._configuration = Configuration(host=api_url, access_token=access_token)
        self._timeout = timeout
        self._reply_token_seconds = reply_token_seconds
        self._client: AsyncApiClient | None = None

    def api(self) -> AsyncMessagingApi:
        if self._client is None:  # the SDK's aiohttp session must be made inside the event loop
            self._client = AsyncApiClient(self._configuration)
        return AsyncMessagingApi(self._client)

    @property
    def _request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self._timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def deliver(self, address: str, replies: Sequence[Reply], reply_context: dict[str, str]) -> None:
        delivered = 0
        token = reply_context.get("reply_token")
        received = float(reply_context.get("received_at") or 0)
        fresh = bool(token) and time.time() - received < self._reply_token_seconds
        for start in range(0, len(replies), MAX_MESSAGES):
            chunk = list(replies[start : start + MAX_MESSAGES])
            messages = [to_line_message(reply) for reply in chunk]
            if start == 0 and fresh and token and await self._reply(token, messages):
                delivered += len(chunk)
                continue
            await self._push(address, chunk, messages, delivered)
            delivered += len(chunk)

    async def _reply(self, token: str, messages: list[TextMessage]) -> bool:
        """True when the reply token carried the messages; False when a push must do it."""
        try:
            await self.api().reply_message(
                ReplyMessageRequest(replyToken=token, messages=messages),
                _request_timeout=self._request_timeout,
            )
        except ApiException as exc:
            log.info("LINE reply token not usable (HTTP %s); pushing instead", exc.status)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("LINE reply failed (%s); pushing instead", type(exc).__name__)
            return False
        return True

    async def _push(self, address: str, chunk: list[Reply], messages: list[TextMessage], delivered: int) -> None:
        key = retry_key(chunk[0].message_id, [reply.text for reply in chunk])
        try:
            await self.api().push_message(
                PushMessageRequest(to=address, messages=messages),
                x_line_retry_key=key,
                _request_timeout=self._request_timeout,
            )
        except ApiException as exc:
            if exc.status == 409:  # this retry key was accepted before: the user has these messages
                return
            status = int(exc.status or 0)
            retryable = status == 429 or status >= 500 or status == 0
            raise DeliveryError(
                f"LINE push HTTP {status}", delivered=delivered, retry_after=_retry_after(exc),
                permanent=not retryable,
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"LINE push {type(exc).__name__}", delivered=delivered) from exc

    async def thinking(self, address: str) -> None:
        await self.api().show_loading_animation(
            ShowLoadingAnimationRequest(chatId=address, loadingSeconds=LOADING_SECONDS),
            _request_timeout=self._request_timeout,
        )

    async def profile_language(self, address: str) -> str | None:
        profile = await self.api().get_profile(address, _request_timeout=self._request_timeout)
        language = getattr(profile, "language", None)
        return str(language) if language else None

    async def language_changed(self, address: str, language: str) -> None:
        """Link the user to their language's rich menu, found through its alias at every change (an
        alias is re-pointed when the menus are re-created, so the id is not cached)."""
        if not address.startswith("U"):  # groups and rooms have no rich menu of their own
            return
        api = self.api()
        try:
            found = await api.get_rich_menu_alias(menu_alias(language), _request_timeout=self._request_timeout)
        except ApiException as exc:
            if exc.status == 404:  # the menus were not created (python -m connectors.line rich-menus)
                log.info("no LINE rich menu for language=%s", language)
                return
            raise
        await api.link_rich_menu_id_to_user(address, str(found.rich_menu_id), _request_timeout=self._request_timeout)
        log.info("LINE user linked to the rich menu of language=%s", language)


def _address(event: Any) -> str | None:
    source = getattr(event, "source", None)
    for attribute in ("group_id", "room_id", "user_id"):
        value = getattr(source, attribute, None)
        if value:
            return str(value)
    return None


def to_inbound(event: Any, received_at: float) -> Inbound | None:
    """One webhook event as the core's message, or None for events the assistant does not answer."""
    address = _address(event)
    if address is None:
        return None
    event_id = getattr(event, "webhook_event_id", None)
    redelivery = bool(getattr(getattr(event, "delivery_context", None), "is_redelivery", False))
    token = getattr(event, "reply_token", None)
    context = {"reply_token": str(token), "received_at": f"{received_at:.3f}"} if token and not redelivery else {}
    common: dict[str, Any] = {"platform": PLATFORM, "platform_user_id": address, "event_id": event_id,
                              "reply_context": context}
    if isinstance(event, MessageEvent):
        if isinstance(event.message, TextMessageContent):
            return Inbound(text=event.message.text.replace("\x00", ""), **common)
        return Inbound(text="", kind="unsupported", **common)  # sticker, image, audio, video, file, location
    if isinstance(event, PostbackEvent):
        data = event.postback.data or ""
        if data in COMMANDS:
            return Inbound(text="", kind=COMMANDS[data], **common)
        return Inbound(text=data, **common)
    if isinstance(event, FollowEvent):
        return Inbound(text="", kind="welcome", **common)
    if isinstance(event, UnfollowEvent):
        return Inbound(text="", kind="unsubscribe", **common)
    return None


def unreadable_message(raw: Any, received_at: float) -> Inbound | None:
    """A message event the SDK could not read (a content type or field newer than the SDK): the user
    still gets the short "text only" reply rather than silence."""
    if not isinstance(raw, dict) or raw.get("type") != "message":
        return None
    source = raw.get("source") or {}
    address = source.get("groupId") or source.get("roomId") or source.get("userId")
    if not isinstance(address, str) or not address:
        return None
    event_id = raw.get("webhookEventId")
    token = raw.get("replyToken")
    redelivery = bool((raw.get("deliveryContext") or {}).get("isRedelivery"))
    fresh = isinstance(token, str) and not redelivery
    context = {"reply_token": str(token), "received_at": f"{received_at:.3f}"} if fresh else {}
    return Inbound(platform=PLATFORM, platform_user_id=address, text="", kind="unsupported",
                   event_id=event_id if isinstance(event_id, str) else None, reply_context=context)


def _bad(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


@dataclass
class LineChannel:
    """The LINE webhook and connector, built from settings."""

    parser: WebhookParser
    line: LineConnector

    @classmethod
    def from_settings(cls, settings: Settings) -> LineChannel:
        logging.getLogger("linebot").setLevel(logging.WARNING)  # the SDK logs bodies at DEBUG
        return cls(
            parser=WebhookParser(settings.line_channel_secret.get_secret_value()),
            line=LineConnector(
                settings.line_channel_access_token.get_secret_value(),
                settings.line_api_url,
                settings.line_timeout,
                settings.line_reply_token_seconds,
            ),
        )

    @property
    def connector(self) -> LineConnector:
        return self.line

    async def start(self, assistant: Assistant) -> None:
        return None

    async def close(self) -> None:
        await self.line.close()

    def router(self, assistant: Assistant) -> APIRouter:
        routes = APIRouter()

        @routes.post("/webhooks/line")
        async def webhook(request: Request, background: BackgroundTasks) -> JSONResponse:
            signature = request.headers.get("x-line-signature")
            if not signature:
                return _bad("the X-Line-Signature header is missing")
            raw = await request.body()
            if len(raw) > MAX_BODY:
                return JSONResponse({"error": "the request body is too large"}, status_code=413)
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                return _bad("the body is not UTF-8")
            try:
                events = self.parser.parse(body, signature)
            except InvalidSignatureError:
                log.warning("LINE webhook with a wrong signature refused")
                return _bad("the signature does not match the body")
            except (ValueError, KeyError, TypeError, AttributeError):
                return _bad("the body is not a LINE webhook (JSON with an events list)")
            received_at = time.time()
            raw_events = json.loads(body)["events"]
            stored: list[int] = []
            for event, raw_event in zip(events, raw_events, strict=False):
                inbound = to_inbound(event, received_at) or unreadable_message(raw_event, received_at)
                if inbound is None:
                    log.info("LINE event ignored type=%s", getattr(event, "type", "?"))
                    continue
                message_id, duplicate = assistant.store_inbound(inbound)
                if duplicate:
                    log.info("LINE redelivery event=%s already stored as message=%s", inbound.event_id, message_id)
                    continue
                stored.append(message_id)
            if stored:
                background.add_task(_respond_all, assistant, stored)
            return JSONResponse({})

        return routes


async def _respond_all(assistant: Assistant, message_ids: Sequence[int]) -> None:
    for message_id in message_ids:
        try:
            await assistant.respond(message_id)
        except Exception:  # stored: the retry worker answers it
            log.exception("answering message=%s failed; the worker will retry", message_id)
