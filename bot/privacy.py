"""Privacy: one user's data deleted or exported, and messages removed after a retention period.

Used by the pipeline (a user's own "delete my data" request), by ``python -m bot privacy ...``
(the office's admin commands) and by the app's background loop (``CONSULT_RETENTION_DAYS``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bot.db.models import Conversation, DeliveryAttempt, Escalation, Identity, Message, User, utcnow
from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES
from bot.safety import normalise

log = logging.getLogger(__name__)

DELETE_COMMAND = "/delete_my_data"
TOMBSTONE_DAYS = 30
"""An inbound platform event older than the retention period is emptied but its event id is kept this
many days longer, so that a late redelivery is still recognised (LINE and Telegram redeliver for hours)."""


def _fold(text: str) -> str:
    return re.sub(r"[\s\-_.,!?。、！？「」'\"()（）]+", " ", normalise(text)).strip()


class DeleteCommand:
    """Recognises a whole message that asks to delete the user's data, in any shipped language:
    ``/delete_my_data`` or the catalog's ``command_delete_my_data`` label (e.g. "Delete my data")."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self._phrases = {_fold(DELETE_COMMAND)}
        for language in LANGUAGES:
            self._phrases.add(_fold(kb.message("command_delete_my_data", language)))

    def matches(self, text: str) -> bool:
        return len(text) <= 80 and _fold(text) in self._phrases


def find_user(session: Session, platform: str, platform_user_id: str) -> User | None:
    """The user behind one platform account, or None."""
    return session.scalar(
        select(User)
        .join(Identity, Identity.user_id == User.id)
        .where(Identity.platform == platform, Identity.platform_user_id == platform_user_id)
    )


def forget(session: Session, user: User, keep_message_id: int | None = None) -> int:
    """Delete what the user told us and what we learnt about them; returns how many messages went.

    Kept: the user and their platform identities (to deliver a confirmation), and the message
    ``keep_message_id`` emptied (the request itself: a redelivered event is recognised, not acted
    on twice). The caller commits.
    """
    conversations = select(Conversation.id).where(Conversation.user_id == user.id)
    session.execute(delete(Escalation).where(Escalation.user_id == user.id))
    doomed = select(Message.id).where(Message.conversation_id.in_(conversations))
    if keep_message_id is not None:
        doomed = doomed.where(Message.id != keep_message_id)
    ids = list(session.scalars(doomed))
    _delete_messages(session, ids)
    kept = session.get(Message, keep_message_id) if keep_message_id is not None else None
    if kept is not None:
        kept.text, kept.payload, kept.reply_context = "", None, None
    user.language = None
    user.detected_language = None
    user.area = None
    for identity in session.scalars(select(Identity).where(Identity.user_id == user.id)):
        identity.language_hint = None
    log.info("deleted the data of user=%s (%d messages)", user.id, len(ids))
    return len(ids)


def erase(session: Session, user: User) -> int:
    """Remove the user entirely (messages, escalations, conversations, identities, the user); the
    office's admin command. Returns how many messages went. The caller commits."""
    count = forget(session, user)
    session.execute(delete(Conversation).where(Conversation.user_id == user.id))
    session.execute(delete(Identity).where(Identity.user_id == user.id))
    session.delete(user)
    log.info("erased user=%s", user.id)
    return count


def _delete_messages(session: Session, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.execute(update(Message).where(Message.in_reply_to.in_(chunk)).values(in_reply_to=None))
        session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.message_id.in_(chunk)))
        session.execute(delete(Message).where(Message.id.in_(chunk)))


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def export(session: Session, user: User) -> dict[str, Any]:
    """Everything stored about one user, as JSON-ready data (for the office to hand over)."""
    identities = session.scalars(select(Identity).where(Identity.user_id == user.id).order_by(Identity.id)).all()
    conversations = session.scalars(
        select(Conversation).where(Conversation.user_id == user.id).order_by(Conversation.id)
    ).all()
    messages = session.scalars(
        select(Message).where(Message.conversation_id.in_([c.id for c in conversations])).order_by(Message.id)
    ).all()
    escalations = session.scalars(
        select(Escalation).where(Escalation.user_id == user.id).order_by(Escalation.id)
    ).all()
    return {
        "user": {"id": user.id, "language": user.language, "detected_language": user.detected_language,
                 "area": user.area, "subscribed": user.subscribed, "created_at": _iso(user.created_at)},
        "identities": [
            {"id": i.id, "platform": i.platform, "platform_user_id": i.platform_user_id,
             "language_hint": i.language_hint, "unsubscribed": i.unsubscribed, "created_at": _iso(i.created_at)}
            for i in identities
        ],
        "conversations": [
            {"id": c.id, "platform_identity": c.identity_id, "handler": c.handler, "created_at": _iso(c.created_at),
             "last_activity": _iso(c.last_activity)}
            for c in conversations
        ],
        "messages": [
            {"id": m.id, "conversation": m.conversation_id, "direction": m.direction, "platform": m.platform,
             "text": m.text, "language": m.language, "status": m.status, "kind": m.kind, "intent": m.intent,
             "in_reply_to": m.in_reply_to, "created_at": _iso(m.created_at)}
            for m in messages
        ],
        "escalations": [
            {"id": e.id, "conversation": e.conversation_id, "reason": e.reason, "urgent": e.urgent,
             "status": e.status, "language": e.language, "platform": e.platform, "transcript": e.transcript,
             "created_at": _iso(e.created_at)}
            for e in escalations
        ],
    }


def purge(session: Session, days: int, now: dt.datetime | None = None) -> dict[str, int]:
    """Apply the retention period: remove messages older than ``days`` days. The caller commits.

    Inbound platform events (with an event id) are first emptied and kept as tombstones for
    :data:`TOMBSTONE_DAYS` more days, so a late redelivery is still recognised and not answered
    again; everything else goes. Escalation transcripts older than ``days`` lose their texts.
    Messages still waiting to be answered or delivered are kept whatever their age.
    """
    if days <= 0:
        return {"deleted": 0, "emptied": 0, "transcripts": 0}
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=days)
    final = ("answered", "sent", "failed", "uncertain", "limited")
    old = Message.created_at < cutoff
    tombstone = (Message.direction == "in") & Message.platform_event_id.is_not(None)
    doomed = list(session.scalars(
        select(Message.id).where(
            old, Message.status.in_(final),
            ~tombstone | (Message.created_at < cutoff - dt.timedelta(days=TOMBSTONE_DAYS)),
        )
    ))
    _delete_messages(session, doomed)
    emptied = session.execute(
        update(Message)
        .where(old, Message.status.in_(final), tombstone, Message.text != "")
        .values(text="", payload=None, reply_context=None)
    ).rowcount  # type: ignore[attr-defined]
    transcripts = 0
    for escalation in session.scalars(select(Escalation).where(Escalation.created_at < cutoff)):
        if any(item.get("text") for item in escalation.transcript or []):
            escalation.transcript = [{**item, "text": ""} for item in escalation.transcript]
            transcripts += 1
    counts = {"deleted": len(doomed), "emptied": int(emptied or 0), "transcripts": transcripts}
    if any(counts.values()):
        log.info("retention %d days: %s", days, counts)
    return counts


def command(action: str, database_url: str, platform: str = "", user_id: str = "", days: int = 0) -> int:
    """``python -m bot privacy export|delete|purge``: prints JSON; returns the exit status."""
    from bot.db import make_engine, sessions, upgrade

    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with sessions(engine)() as session:
            if action == "purge":
                if days <= 0:
                    print(json.dumps({"error": "no retention period: set CONSULT_RETENTION_DAYS or --days"}))
                    return 2
                print(json.dumps(purge(session, days)))
                session.commit()
                return 0
            user = find_user(session, platform, user_id)
            if user is None:
                print(json.dumps({"error": f"no user {user_id!r} on platform {platform!r}"}))
                return 1
            if action == "export":
                print(json.dumps(export(session, user), ensure_ascii=False, indent=2))
                return 0
            user_db_id = user.id
            deleted = erase(session, user)
            session.commit()
            print(json.dumps({"erased_user": user_db_id, "messages": deleted}))
            return 0
    finally:
        engine.dispose()
