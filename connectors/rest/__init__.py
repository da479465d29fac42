"""The local REST channel: Rasa's REST channel format, so existing web-chat widgets connect.

``POST /webhooks/rest/webhook`` with ``{"sender", "message"}`` answers a JSON list of
``{"recipient_id", "text"}`` (plus ``"buttons"``). Answers that come later (the engine was
down) are read with ``GET /webhooks/rest/messages?sender=...&after=<message id>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bot.pipeline import Assistant
from bot.ports import Inbound, Reply
from bot.sanitize import clean_text

PLATFORM = "rest"
log = logging.getLogger(__name__)
MAX_SENDER = 128
MAX_EVENT_ID = 128
MAX_BODY = 256 * 1024


class RestConnector:
    """Delivery is storage: the client gets replies in the HTTP answer or by polling."""

    platform = PLATFORM

    async def deliver(self, address: str, replies: Sequence[Reply], reply_context: dict[str, str]) -> None:
        return None

    async def thinking(self, address: str) -> None:
        return None

    async def profile_language(self, address: str) -> str | None:
        return None

    async def language_changed(self, address: str, language: str) -> None:
        return None


def _bad(reason: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def render(recipient: str, replies: Sequence[Reply], ids: Sequence[int | None] = ()) -> list[dict[str, Any]]:
    out = []
    for index, reply in enumerate(replies):
        item: dict[str, Any] = {"recipient_id": recipient, "text": reply.text}
        if reply.buttons:
            item["buttons"] = [{"title": b.title, "payload": b.payload} for b in reply.buttons]
        if index < len(ids) and ids[index] is not None:
            item["message_id"] = ids[index]
        out.append(item)
    return out


def router(assistant: Assistant) -> APIRouter:
    routes = APIRouter()

    @routes.post("/webhooks/rest/webhook")
    async def webhook(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _bad("the request body is too large", 413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _bad("the body must be JSON: {\"sender\": ..., \"message\": ...}")
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object")
        sender, text = body.get("sender"), body.get("message")
        if not isinstance(sender, str) or not sender.strip() or len(sender) > MAX_SENDER:
            return _bad(f"sender must be a non-empty string of at most {MAX_SENDER} characters")
        if not isinstance(text, str):
            return _bad("message must be a string")
        event_id = body.get("message_id")
        if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID):
            return _bad(f"message_id must be a string of at most {MAX_EVENT_ID} characters")
        metadata = body.get("metadata")
        hint = metadata.get("language") if isinstance(metadata, dict) else None
        hint = hint if isinstance(hint, str) else None
        text = text.replace("\x00", "")
        sender = clean_text(sender)  # echoed in the answer: it must encode as UTF-8
        inbound = Inbound(platform=PLATFORM, platform_user_id=sender, text=text, event_id=event_id, language_hint=hint)
        message_id, duplicate = assistant.store_inbound(inbound)
        try:
            replies = assistant.replies_to(message_id) if duplicate else tuple(await assistant.process(message_id))
        except Exception:  # stored: the background worker answers it; the client reads it by polling
            log.exception("answering message=%s failed; the worker will retry", message_id)
            return JSONResponse([], status_code=202)
        return JSONResponse(render(sender, replies, assistant.reply_ids(message_id)))

    @routes.get("/webhooks/rest/messages")
    async def messages(sender: str = "", after: int = 0) -> JSONResponse:
        if not sender or len(sender) > MAX_SENDER:
            return _bad("sender is required")
        found = assistant.outbound_since(PLATFORM, sender, after)
        replies = [reply for _, reply in found]
        ids = [message_id for message_id, _ in found]
        return JSONResponse(render(sender, replies, ids))

    return routes
