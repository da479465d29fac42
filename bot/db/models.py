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
    staff_notice_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """While staff hold the conversation: the user has been told so (once per hand-over)."""
    area_prompted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The user was just asked for their municipality: a next message that names none is told so once."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_activity: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Message(Base):
    """Every message in and out, stored before anything else happens to it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("platform", "platform_event_id"),
        Index("ix_messages_status", "direction", "status"),
        Index("ix_messages_conversation", "conversation_id", "id"),
        Index("ix_messages_translation", "translation_status"),
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
    """in: received, processing, waiting_engine, answered, staff (kept for staff, the assistant silent).
    out: pending, delivering, retry, sent, failed."""
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
    text_ja: Mapped[str | None] = mapped_column(Text)
    """in: the Japanese staff read beside the original (the original itself when it is Japanese)."""
    translated_by: Mapped[str | None] = mapped_column(String(32))
    """How ``text_ja`` was made: ``original``, ``argos`` or ``argos via en``."""
    translation_status: Mapped[str | None] = mapped_column(String(12))
    """in, for staff: ``pending`` (the background worker translates it), ``done``, ``unavailable``."""
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    """out: the staff member who wrote it (None: the assistant)."""
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


ESCALATION_STATUSES = ("open", "assigned", "waiting", "resolved")
"""open → assigned (a staff member took it) → waiting (for the user) → resolved; a user message reopens."""


class Escalation(Base):
    """A case for staff: opened on a hand-off, with the transcript at that moment."""

    __tablename__ = "escalations"
    __table_args__ = (
        Index("ix_escalations_queue", "status", "urgent", "created_at"),
        Index("ix_escalations_language", "language"),
    )

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
    """The conversation's last messages when the case opened (what the assistant tried)."""
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    topic: Mapped[str | None] = mapped_column(String(128))
    """The knowledge-base entry (or intent) the assistant last tried."""
    category: Mapped[str | None] = mapped_column(String(64))
    """That entry's category (visa, work, life, medical, disaster, ...)."""
    night: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Opened outside office hours: the morning queue lists these first."""
    summary_ja: Mapped[str | None] = mapped_column(Text)
    """The user's first messages in Japanese, short, for the queue."""
    first_message_id: Mapped[int | None] = mapped_column(Integer)
    """The conversation's first message that belongs to this case."""
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StaffUser(Base):
    """A staff account of the console and API (role ``staff`` or ``admin``)."""

    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(8), default="staff")
    password_hash: Mapped[str] = mapped_column(String(256))
    """argon2id (argon2-cffi), never the password."""
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """An API token; only its SHA-256 is stored (the token is shown once, at creation)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One staff action (login, reply, hand back, resolve, canned reply change, KB decision, ...)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"), index=True)
    action: Mapped[str] = mapped_column(String(48))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Identifiers and choices; never message bodies or passwords."""
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CannedReply(Base):
    """A reply staff reuse, in Japanese (translated like any staff reply)."""

    __tablename__ = "canned_replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(128))
    text_ja: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Broadcast(Base):
    """An alert sent to many users (``bot/broadcast.py``): the template, its fields, who it is for."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    template: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    free_text: Mapped[str] = mapped_column(Text, default="")
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """``{"areas": [...], "languages": [...], "platforms": [...]}``; an empty list means everyone."""
    texts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The rendered alert per language, fixed when it is queued."""
    machine_translated: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """Languages whose free text was machine-translated."""
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """queued, sending, done, refused."""
    detail: Mapped[str] = mapped_column(String(300), default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class BroadcastDelivery(Base):
    """One delivery job: a Telegram chat, a LINE user (push) or up to 500 LINE users (multicast).

    Claimed with a conditional UPDATE (``status='queued'`` → ``sending`` with a claim token), so two
    workers never take the same one; a claim whose worker died is given back after its lease.
    """

    __tablename__ = "broadcast_deliveries"
    __table_args__ = (
        Index("ix_broadcast_deliveries_due", "status", "platform", "next_attempt_at"),
        Index("ix_broadcast_deliveries_broadcast", "broadcast_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(16))
    addresses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    user_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    recipients: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """queued, sending, sent, failed, blocked."""
    retry_key: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claim: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    detail: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckinAnswer(Base):
    """A user's answer to a safety check-in (the latest one counts)."""

    __tablename__ = "checkin_answers"
    __table_args__ = (UniqueConstraint("broadcast_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    answer: Mapped[str] = mapped_column(String(8))
    """safe, help."""
    area: Mapped[str | None] = mapped_column(String(64))
    escalation_id: Mapped[int | None] = mapped_column(ForeignKey("escalations.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KbSuggestion(Base):
    """A staff answer proposed as a knowledge-base entry; an admin accepts it into a draft file."""

    __tablename__ = "kb_suggestions"

    id: Mapped[int] = mapped_column(primary_key=True)
    escalation_id: Mapped[int | None] = mapped_column(ForeignKey("escalations.id", ondelete="SET NULL"))
    question_ja: Mapped[str] = mapped_column(Text)
    answer_ja: Mapped[str] = mapped_column(Text)
    proposed_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(12), default="proposed")
    """proposed, accepted, rejected."""
    translations: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Machine translations made on acceptance: ``{lang: {"question": ..., "answer": ..., "via": ...}}``."""
    draft_path: Mapped[str | None] = mapped_column(String(512))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Switch(Base):
    """A stored switch every worker reads (disaster mode)."""

    __tablename__ = "switches"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    on: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_by: Mapped[str] = mapped_column(String(64), default="")
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
