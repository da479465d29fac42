"""Inbound values made safe to store in any database, whatever a platform or a client sent."""

from __future__ import annotations

import dataclasses
import hashlib

from bot.ports import Inbound

MAX_ID = 128
"""The width of the id columns (``platform_user_id``, ``platform_event_id``)."""


def clean_text(text: str) -> str:
    """No NUL (PostgreSQL refuses it) and no lone surrogates (not encodable as UTF-8): each becomes U+FFFD."""
    if text.isascii() and "\x00" not in text:
        return text
    text = text.replace("\x00", "\ufffd")
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def clean_id(value: str) -> str:
    """An id that fits its column: cleaned, and a long one replaced by its digest (never cut, so two
    different ids never become one)."""
    value = clean_text(value)
    if len(value) <= MAX_ID:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def clean_inbound(inbound: Inbound) -> Inbound:
    return dataclasses.replace(
        inbound,
        platform_user_id=clean_id(inbound.platform_user_id),
        text=clean_text(inbound.text),
        event_id=clean_id(inbound.event_id) if inbound.event_id is not None else None,
        language_hint=clean_text(inbound.language_hint)[:32] if inbound.language_hint else None,
        metadata={clean_text(k): clean_text(v) for k, v in inbound.metadata.items()},
        reply_context={clean_text(k): clean_text(v) for k, v in inbound.reply_context.items()},
    )
