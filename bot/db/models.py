"""Tables. Schema changes go through Alembic (``alembic/versions``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """A person, whatever platforms they write from."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    language: Mapped[str | None] = mapped_column(String(16))
    """The language the user chose; wins over detection."""
    detected_language: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    area: Mapped[str | None] = mapped_column(String(64))

    identities: Mapped[list[Identity]] = relationship(back_populates="user")


class Identity(Base):
    """A user's account on one platform (LINE user id, Telegram chat id, REST sender)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(16))
    platform_user_id: Mapped[str] = mapped_column(String(128))
    language_hint: Mapped[str | None] = mapped_column(String(16))
    unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The user left this platform's account (LINE unfollow, Telegram bot blocked)."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    user: Mapped[User] = relationship(back_populates="identities")


class Conversation(Base):
    """A user's conversation on one platform; ``handler`` says who answers: bot or staff."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"), index=True)
    handler: Mapped[str] = mapped_column(String(16), default="bot")
    failed_understandings: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_activity: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Message(Base):
    """Every message in and out, stored before anything else happens to it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("platform", "platform_event_id"),
        Index("ix_messages_status", "direction", "status"),
        Index("ix_messages_conversation", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(3))
    """``in`` from the user, ``out`` to the user."""
    platform: Mapped[str] = mapped_column(String(16))
    platform_event_id: Mapped[str | None] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    """in: received, processing, waiting_engine, answered. out: pending, sent, failed."""
    in_reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """out: buttons and the key it was rendered from; in: the engine's parse summary."""
    intent: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """in: processing claims. out: delivery attempts."""
    kind: Mapped[str] = mapped_column(String(16), default="text", server_default="text")
    """in: what the platform event was (``bot.ports.KINDS``)."""
    reply_context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """in: what the connector needs to answer this event (a LINE reply token); used once, then cleared."""
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    """out, status ``retry``: when the next delivery attempt is due."""
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    """When a worker took it (in: ``processing``; out: ``delivering``); after the lease another worker may."""
    takeovers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """in: how often a claim expired (its worker stopped) and another worker took the message over."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeliveryAttempt(Base):
    """One try to deliver the replies to one inbound message (``message_id``: the first reply)."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    """sent, retry, failed."""
    detail: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Escalation(Base):
    """A case for staff: opened on a hand-off, with the transcript at that moment."""

    __tablename__ = "escalations"
    __table_args__ = (Index("ix_escalations_status", "status", "urgent"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(32))
    """requested, fallback, safety, feedback, staff."""
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="open")
    language: Mapped[str | None] = mapped_column(String(16))
    platform: Mapped[str] = mapped_column(String(16))
    transcript: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
