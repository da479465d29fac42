"""One message, end to end (ARCHITECTURE.md): store, language, safety, engine, render, deliver.

Nothing is processed before it is stored, and nothing stored is dropped: a message the engine
could not answer waits (``waiting_engine``) and :meth:`Assistant.retry_waiting` answers it later,
in order, through the connector it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, exists, or_, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot.areas import MAX_MESSAGE_CHARS, AreaDirectory
from bot.broadcast import disaster_mode_on
from bot.checkin import is_checkin, record_checkin
from bot.db.models import Conversation, DeliveryAttempt, Escalation, Identity, Message, User, utcnow
from bot.engine_client import EngineClient, EngineReply, EngineUnavailable
from bot.knowledge import KnowledgeBase
from bot.language_id import normalise_hint, resolve
from bot.languages import LANGUAGES
from bot.office_hours import OfficeHours
from bot.ports import Button, Connector, DeliveryError, Inbound, Reply
from bot.privacy import DeleteCommand, forget
from bot.ratelimit import ANSWER, NOTIFY, RateLimiter
from bot.safety import SafetyNet, normalise
from bot.sanitize import clean_inbound

log = logging.getLogger(__name__)

SUGGESTIONS = 3
TRANSCRIPT_LENGTH = 30
MAX_DELIVERY_ATTEMPTS = 8
RETRY_BACKOFF = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds before delivery attempt 2, 3, ...; the platform's Retry-After wins when it is longer."""
THINKING_TIMEOUT = 2.0
FEEDBACK_PAYLOAD = "/feedback"
_AREA_COMMAND = re.compile(r"^/area(?:@\w+)?(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
"""``/area`` typed on any channel, with an optional answer (``/area Morioka``)."""
OPEN_CASE = ("open", "assigned", "waiting")
JAPANESE = ("ja", "ja-easy")
MAX_PROCESSING_ATTEMPTS = 3
MAX_TAKEOVERS = 3
"""A message whose worker stopped this often while answering it is given up (``failed``) and logged."""
OPEN_INBOUND = ("received", "processing", "waiting_engine")
"""An inbound message in one of these is not answered yet: newer ones of its conversation wait for it."""
UNSENT = ("pending", "retry", "delivering")
"""An outbound message in one of these has not reached the user yet: newer ones wait for it."""
RECORD_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
"""Seconds between tries to record a delivery that happened while the database was unreachable."""


@dataclass(frozen=True)
class Outcome:
    """What became of one inbound message."""

    message_id: int
    replies: tuple[Reply, ...]
    duplicate: bool = False


def has_words(text: str) -> bool:
    """True when the text has at least one letter or digit (not only spaces, marks, emoji)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


class Assistant:
    """The platform-free conversation pipeline."""

    def __init__(
        self,
        kb: KnowledgeBase,
        sessions: sessionmaker[Session],
        engine: EngineClient,
        safety: SafetyNet,
        connectors: Mapping[str, Connector],
        engine_message_chars: int = 500,
        clock: Any = utcnow,
        limiter: RateLimiter | None = None,
        claim_lease: float = 60.0,
        max_in_flight: int = 16,
    ) -> None:
        self.kb = kb
        self.max_in_flight = max(1, max_in_flight)
        """Messages answered at once by this worker; beyond it a webhook's message waits for the background
        loop, so that storing and acknowledging new webhooks stays fast under a burst."""
        self._in_flight = 0
        self.stopping = False
        """Set by a clean shutdown: a message whose answering is cancelled then is given back at once
        (a worker killed outright leaves its claim to the lease)."""
        self.sessions = sessions
        self.engine = engine
        self.safety = safety
        self.connectors = connectors
        self.engine_message_chars = engine_message_chars
        self.hours = OfficeHours(kb.region)
        self.clock = clock
        self.claim_lease = dt.timedelta(seconds=claim_lease)
        self._language_names = self._build_language_names(kb)
        self._delete_command = DeleteCommand(kb)
        self.areas = AreaDirectory(kb.region)
        self.limiter = limiter

    # ------------------------------------------------------------------ intake

    async def handle(self, inbound: Inbound) -> Outcome:
        """Store, then process; returns the replies for this message (stored ones on a duplicate)."""
        message_id, duplicate = self.store_inbound(inbound)
        if duplicate:
            return Outcome(message_id, self.replies_to(message_id), duplicate=True)
        replies = await self.process(message_id)
        return Outcome(message_id, tuple(replies))

    def store_inbound(self, inbound: Inbound) -> tuple[int, bool]:
        """Store the message first; returns ``(message id, was it already stored)``."""
        inbound = clean_inbound(inbound)
        with self.sessions() as session:
            if inbound.event_id:
                existing = session.scalar(
                    select(Message.id).where(
                        Message.platform == inbound.platform, Message.platform_event_id == inbound.event_id
                    )
                )
                if existing is not None:
                    return existing, True
            identity = self._identity(session, inbound)
            conversation = self._conversation(session, identity)
            message = Message(
                conversation_id=conversation.id,
                direction="in",
                platform=inbound.platform,
                platform_event_id=inbound.event_id,
                text=inbound.text,
                status="received",
                kind=inbound.kind,
                reply_context=dict(inbound.reply_context) or None,
            )
            session.add(message)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                existing = session.scalar(
                    select(Message.id).where(
                        Message.platform == inbound.platform, Message.platform_event_id == inbound.event_id
                    )
                )
                if existing is None:
                    raise
                return existing, True
            log.info("stored inbound message=%s conversation=%s platform=%s", message.id, conversation.id,
                     inbound.platform)
            return message.id, False

    def _identity(self, session: Session, inbound: Inbound) -> Identity:
        identity = session.scalar(
            select(Identity).where(
                Identity.platform == inbound.platform, Identity.platform_user_id == inbound.platform_user_id
            )
        )
        hint = normalise_hint(inbound.language_hint)
        if identity is None:
            user = User()
            session.add(user)
            session.flush()
            identity = Identity(
                user_id=user.id, platform=inbound.platform, platform_user_id=inbound.platform_user_id,
                language_hint=hint,
            )
            session.add(identity)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                return self._identity(session, inbound)
        elif hint and identity.language_hint != hint:
            identity.language_hint = hint
        return identity

    def _conversation(self, session: Session, identity: Identity) -> Conversation:
        conversation = session.scalar(
            select(Conversation).where(Conversation.identity_id == identity.id).order_by(Conversation.id.desc())
        )
        if conversation is None:
            conversation = Conversation(user_id=identity.user_id, identity_id=identity.id)
            session.add(conversation)
            session.flush()
        conversation.last_activity = utcnow()
        return conversation

    # ------------------------------------------------------------------ processing

    def _lease_expired(self) -> Any:
        """A ``processing`` claim older than the lease: its worker died (or hung) before finishing."""
        cutoff = utcnow() - self.claim_lease
        return and_(Message.status == "processing",
                    or_(Message.claimed_at.is_(None), Message.claimed_at < cutoff))

    def _claim(self, session: Session, message_id: int) -> bool:
        """Take a message for this worker (conditional UPDATE: two workers never both succeed).

        The claim is a lease: a worker that dies with the message ``processing`` loses it after
        ``claim_lease`` seconds, and :meth:`retry_waiting` (any worker) answers it.
        """
        result = session.execute(
            update(Message)
            .where(Message.id == message_id,
                   or_(Message.status.in_(("received", "waiting_engine")), self._lease_expired()))
            .values(status="processing", attempts=Message.attempts + 1, claimed_at=utcnow(),
                    takeovers=case((Message.status == "processing", Message.takeovers + 1), else_=Message.takeovers))
        )
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _give_up_poison(self) -> None:
        """A message that stopped its worker :data:`MAX_TAKEOVERS` times would block its conversation forever."""
        with self.sessions() as session:
            ids = session.scalars(
                select(Message.id).where(Message.direction == "in", self._lease_expired(),
                                         Message.takeovers >= MAX_TAKEOVERS)
            ).all()
            if ids:
                session.execute(update(Message).where(Message.id.in_(ids), self._lease_expired())
                                .values(status="failed"))
                session.commit()
                log.error("messages %s failed while being answered %d times; given up", list(ids), MAX_TAKEOVERS)

    @staticmethod
    def _still_ours(session: Session, message_id: int, claim: int) -> bool:
        """True when no other worker took the message over since our claim (``attempts`` is the token)."""
        result = session.execute(
            update(Message).where(Message.id == message_id, Message.attempts == claim).values(claimed_at=None),
            execution_options={"synchronize_session": False},
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def respond(self, message_id: int) -> list[Reply]:
        """Answer one stored message and deliver the answer through its platform's connector.

        What a webhook runs after it has stored the event and answered the platform. When this
        worker already answers :attr:`max_in_flight` messages, the message stays ``received`` and
        the background loop (:meth:`retry_waiting`) answers it a moment later, in order.
        """
        if self._in_flight >= self.max_in_flight:
            log.info("busy: message=%s left for the background loop", message_id)
            return []
        with self._answering():
            return await self.process(message_id, deliver=True)

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Counts a message being answered (what :meth:`respond` compares with ``max_in_flight``)."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def process(self, message_id: int, deliver: bool = False) -> list[Reply]:
        """Answer one stored inbound message (and any older one of its conversation still waiting)."""
        with self.sessions() as session:
            message = session.get(Message, message_id)
            if message is None:
                return []
            older = session.scalars(
                select(Message.id)
                .where(
                    Message.conversation_id == message.conversation_id,
                    Message.direction == "in",
                    Message.status == "waiting_engine",
                    Message.id < message_id,
                )
                .order_by(Message.id)
            ).all()
        for older_id in older:
            await self._process_one(older_id, deliver=True)
            if self._still_waiting(older_id):
                break
        replies = await self._process_one(message_id, deliver=deliver)
        await self._process_followers(message_id)
        return replies

    async def _process_followers(self, message_id: int) -> None:
        """Once a message is answered, the newer ones of its conversation that waited for it, in order."""
        with self.sessions() as session:
            row = session.execute(
                select(Message.conversation_id, Message.status).where(Message.id == message_id)
            ).first()
            if row is None or row.status != "answered":
                return
            newer = session.scalars(
                select(Message.id)
                .where(Message.conversation_id == row.conversation_id, Message.direction == "in",
                       Message.status == "waiting_engine", Message.id > message_id)
                .order_by(Message.id)
            ).all()
        for newer_id in newer:
            await self._process_one(newer_id, deliver=True)
            if self._still_waiting(newer_id):
                break

    def _release(self, message_id: int) -> None:
        """A message whose processing crashed goes back to the worker (``failed`` after a few tries)."""
        with self.sessions() as session:
            attempts = session.scalar(select(Message.attempts).where(Message.id == message_id)) or 0
            status = "failed" if attempts >= MAX_PROCESSING_ATTEMPTS else "received"
            session.execute(
                update(Message).where(Message.id == message_id, Message.status == "processing").values(status=status)
            )
            session.commit()
        log.error("processing message=%s failed (attempt %d); status %s", message_id, attempts, status)

    def _give_back(self, message_id: int, claim: int) -> None:
        """A clean shutdown stopped this answer: the next start answers the message at once, not after the lease."""
        try:
            with self.sessions() as session:
                session.execute(
                    update(Message).where(Message.id == message_id, Message.status == "processing",
                                          Message.attempts == claim)
                    .values(status="received", attempts=Message.attempts - 1, claimed_at=None)
                )
                session.commit()
        except (OperationalError, InterfaceError):
            log.warning("message=%s stays claimed until its lease ends: the database is unavailable", message_id)
            return
        log.info("message=%s given back unanswered: the worker is stopping", message_id)

    def _still_waiting(self, message_id: int) -> bool:
        with self.sessions() as session:
            return session.scalar(select(Message.status).where(Message.id == message_id)) == "waiting_engine"

    async def _process_one(self, message_id: int, deliver: bool) -> list[Reply]:
        with self.sessions() as session:
            if not self._claim(session, message_id):
                return []
            message = session.get(Message, message_id)
            assert message is not None
            claim = message.attempts
            conversation = session.get(Conversation, message.conversation_id)
            assert conversation is not None
            identity = session.get(Identity, conversation.identity_id)
            user = session.get(User, conversation.user_id)
            assert identity is not None and user is not None
            language_before = _menu_language(user, identity)
            try:
                replies, engine_reply = await self._decide(session, message, conversation, identity, user)
            except asyncio.CancelledError:
                session.rollback()
                if self.stopping:
                    self._give_back(message_id, claim)
                raise
            except Exception:
                session.rollback()
                self._release(message_id)
                raise
            language_after = _menu_language(user, identity)
            if message.status == "processing":
                message.status = "answered"
            if engine_reply is not None:
                message.intent = engine_reply.intent
                message.confidence = engine_reply.confidence
                message.payload = {"parse": engine_reply.parse}
            outbound = self._store_replies(session, message, replies)
            if not self._still_ours(session, message_id, claim):
                session.rollback()
                log.warning("message=%s was taken over by another worker (lease expired); not answered twice",
                            message_id)
                return []
            session.commit()
            address, platform = identity.platform_user_id, identity.platform
            log.info("processed message=%s status=%s replies=%d", message.id, message.status, len(replies))
        if deliver and replies:
            await self.deliver(platform, address, outbound, replies, inbound_id=message_id)
        elif replies:
            self._mark(outbound, "sent")
        if language_after and language_after != language_before and platform in self.connectors:
            await self._best_effort(self.connectors[platform].language_changed(address, language_after))
        return replies

    def _claim_reply_context(self, inbound_id: int) -> dict[str, str]:
        """The inbound event's reply context, at most once (a LINE reply token is single-use)."""
        with self.sessions() as session:
            context = session.scalar(select(Message.reply_context).where(Message.id == inbound_id))
            if not context:
                return {}
            result = session.execute(
                update(Message)
                .where(Message.id == inbound_id, Message.reply_context.is_not(None))
                .values(reply_context=None)
            )
            session.commit()
            if not result.rowcount:  # type: ignore[attr-defined]
                return {}  # another worker took it
            return {str(k): str(v) for k, v in context.items()}

    async def deliver(
        self,
        platform: str,
        address: str,
        outbound: Sequence[int],
        replies: Sequence[Reply],
        inbound_id: int | None = None,
    ) -> bool:
        """Deliver stored replies; on failure they wait for :meth:`retry_deliveries`. True when all arrived."""
        connector = self.connectors.get(platform)
        if connector is None:
            log.error("no connector for platform=%s", platform)
            self._mark(outbound, "failed")
            self._attempt(outbound, platform, "failed", "no connector")
            return False
        replies = [dataclasses.replace(reply, message_id=mid) for mid, reply in zip(outbound, replies, strict=True)]
        urgent = any(reply.key.startswith("msg:emergency") for reply in replies)
        if not urgent and outbound and self._older_unsent(outbound[0]):
            self._hold(outbound)  # delivered after the older replies of the conversation, by the retry loop
            return False
        context = self._claim_reply_context(inbound_id) if inbound_id is not None else {}
        try:
            await connector.deliver(address, replies, context)
        except DeliveryError as exc:
            sent = list(outbound[: exc.delivered])
            rest = list(outbound[exc.delivered :])
            await self._record_sent(sent, platform, attempt=False)
            if exc.unsubscribed:
                self._unsubscribe(platform, address)
            if exc.uncertain and rest and not replies[exc.delivered].key.startswith("msg:emergency"):
                self._mark(rest[:1], "uncertain")  # may have arrived; never sent blindly twice
                self._attempt(rest[:1], platform, "uncertain", str(exc))
                rest = rest[1:]
            self._schedule_retry(rest, platform, exc)
            return False
        await self._record_sent(outbound, platform)
        if outbound:
            await self.retry_deliveries(conversation_of=outbound[0])
        return True

    def _unsubscribe(self, platform: str, address: str) -> None:
        with self.sessions() as session:
            session.execute(
                update(Identity)
                .where(Identity.platform == platform, Identity.platform_user_id == address)
                .values(unsubscribed=True)
            )
            session.commit()
        log.info("platform=%s refused delivery for good: the identity is marked unsubscribed", platform)

    async def _record_sent(self, outbound: Sequence[int], platform: str, attempt: bool = True) -> None:
        """Record a delivery the platform accepted. If the database is briefly away (a restart), keep
        trying: unrecorded, the replies would be reclaimed after the lease and shown twice."""
        for wait in (*RECORD_RETRIES, None):
            try:
                self._mark(outbound, "sent")
                if attempt:
                    self._attempt(outbound, platform, "sent", "")
                return
            except (OperationalError, InterfaceError):
                if wait is None:
                    raise
                log.warning("database unreachable while recording delivered messages %s; retrying", list(outbound))
                await asyncio.sleep(wait)

    def _older_unsent(self, first_outbound: int) -> bool:
        """True when an older reply of the same conversation has not reached the user yet."""
        with self.sessions() as session:
            conversation_id = session.scalar(select(Message.conversation_id).where(Message.id == first_outbound))
            older = select(Message.id).where(
                Message.conversation_id == conversation_id, Message.direction == "out",
                Message.status.in_(UNSENT), Message.id < first_outbound,
            )
            return bool(session.scalar(select(exists(older))))

    def _hold(self, outbound: Sequence[int]) -> None:
        with self.sessions() as session:
            session.execute(
                update(Message).where(Message.id.in_(outbound), Message.status.in_(("pending", "delivering")))
                .values(status="retry", next_attempt_at=utcnow())
            )
            session.commit()

    def _attempt(self, outbound: Sequence[int], platform: str, outcome: str, detail: str) -> None:
        if not outbound:
            return
        with self.sessions() as session:
            session.add(DeliveryAttempt(message_id=outbound[0], platform=platform, outcome=outcome,
                                        detail=detail[:200]))
            session.commit()

    def _schedule_retry(self, outbound: Sequence[int], platform: str, exc: DeliveryError) -> None:
        if not outbound:
            return
        with self.sessions() as session:
            rows = session.scalars(select(Message).where(Message.id.in_(outbound))).all()
            attempts = max((row.attempts or 0) for row in rows) + 1
            give_up = exc.permanent or attempts >= MAX_DELIVERY_ATTEMPTS
            wait = RETRY_BACKOFF[min(attempts - 1, len(RETRY_BACKOFF) - 1)]
            if exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
            for row in rows:
                row.attempts = attempts
                row.status = "failed" if give_up else "retry"
                row.next_attempt_at = None if give_up else utcnow() + dt.timedelta(seconds=wait)
            outcome = "failed" if give_up else "retry"
            session.add(DeliveryAttempt(message_id=outbound[0], platform=platform, outcome=outcome,
                                        detail=str(exc)[:200]))
            session.commit()
        log.warning("delivery %s platform=%s messages=%s attempt=%d: %s", outcome, platform, list(outbound),
                    attempts, exc)

    def _reclaim_deliveries(self) -> None:
        """Replies a dead worker was delivering (``pending`` / ``delivering`` past the lease) go back to ``retry``."""
        now = utcnow()
        cutoff = now - self.claim_lease
        with self.sessions() as session:
            result = session.execute(
                update(Message)
                .where(
                    Message.direction == "out",
                    or_(
                        and_(Message.status == "pending", Message.created_at < cutoff),
                        and_(Message.status == "delivering",
                             or_(Message.claimed_at < cutoff,
                                 and_(Message.claimed_at.is_(None), Message.created_at < cutoff))),
                    ),
                )
                .values(status="retry", next_attempt_at=now)
            )
            session.commit()
            if result.rowcount:  # type: ignore[attr-defined]
                log.warning("%d replies left by a stopped worker are delivered again", result.rowcount)  # type: ignore[attr-defined]

    async def retry_deliveries(self, limit: int = 50, conversation_of: int | None = None) -> int:
        """Deliver replies whose earlier attempt failed (or that waited for older ones) and whose time has come.

        Replies reach the user in the order of the conversation: a batch waits while an older reply
        of its conversation is unsent. ``conversation_of``: only the conversation of this message.
        Returns how many batches were delivered.
        """
        now = utcnow()
        if conversation_of is None:
            self._reclaim_deliveries()
        with self.sessions() as session:
            query = (
                select(Message.in_reply_to)
                .where(Message.direction == "out", Message.status == "retry", Message.next_attempt_at <= now)
                .group_by(Message.in_reply_to)
                .order_by(Message.in_reply_to)
                .limit(limit)
            )
            if conversation_of is not None:
                query = query.where(Message.conversation_id == select(Message.conversation_id)
                                    .where(Message.id == conversation_of).scalar_subquery())
            due = session.execute(query).scalars().all()
        delivered = 0
        for inbound_id in due:
            with self.sessions() as session:
                rows = session.scalars(
                    select(Message)
                    .where(Message.in_reply_to == inbound_id, Message.direction == "out", Message.status == "retry")
                    .order_by(Message.id)
                ).all()
                ids = [row.id for row in rows]
                if not ids or self._older_unsent(ids[0]):
                    continue
                stamp = utcnow()  # our claim: a partial claim gives back only its own rows, never another worker's
                claimed = session.execute(
                    update(Message).where(Message.id.in_(ids), Message.status == "retry")
                    .values(status="delivering", claimed_at=stamp)
                )
                session.commit()
                if claimed.rowcount != len(ids):  # type: ignore[attr-defined]
                    session.execute(
                        update(Message).where(Message.id.in_(ids), Message.status == "delivering",
                                              Message.claimed_at == stamp)
                        .values(status="retry")
                    )
                    session.commit()
                    continue
                conversation = session.get(Conversation, rows[0].conversation_id)
                identity = session.get(Identity, conversation.identity_id) if conversation else None
                if identity is None or identity.unsubscribed:
                    session.execute(update(Message).where(Message.id.in_(ids)).values(status="failed"))
                    session.commit()
                    continue
                replies = [reply_from_row(row) for row in rows]
                platform, address = identity.platform, identity.platform_user_id
            if await self.deliver(platform, address, ids, replies, inbound_id=inbound_id):
                delivered += 1
        return delivered

    def _mark(self, ids: Sequence[int], status: str) -> None:
        if not ids:
            return
        with self.sessions() as session:
            session.execute(update(Message).where(Message.id.in_(ids)).values(status=status))
            session.commit()

    def _store_replies(self, session: Session, message: Message, replies: Sequence[Reply]) -> list[int]:
        rows = [
            Message(
                conversation_id=message.conversation_id,
                direction="out",
                platform=message.platform,
                text=reply.text,
                language=message.language,
                status="pending",
                in_reply_to=message.id,
                payload={
                    "key": reply.key,
                    "buttons": [{"title": b.title, "payload": b.payload} for b in reply.buttons],
                },
            )
            for reply in replies
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]

    async def _decide(
        self, session: Session, message: Message, conversation: Conversation, identity: Identity, user: User
    ) -> tuple[list[Reply], EngineReply | None]:
        kind = message.kind or "text"
        connector = self.connectors.get(identity.platform)
        if kind == "unsubscribe":
            identity.unsubscribed = True
            log.info("identity=%s unsubscribed platform=%s", identity.id, identity.platform)
            return [], None
        if (message.attempts or 0) <= 1:
            identity.unsubscribed = False  # whoever writes can be answered (a Telegram user unblocked the bot)
        if kind == "text" and self._delete_command.matches(message.text or ""):
            kind = message.kind = "delete_data"
        if kind == "text" and area_argument(message.text or "") is not None:  # "/area" typed, on any channel
            kind = message.kind = "area_menu"
        if kind == "welcome":
            identity.unsubscribed = False
            if connector is not None and not user.language:
                session.commit()  # no transaction stays open while we wait for the network
                hint = normalise_hint(await self._best_effort(connector.profile_language(identity.platform_user_id)))
                if hint:
                    identity.language_hint = hint
        if kind == "text" and is_checkin(message.text or ""):  # an alert's safety check-in button
            language, _ = resolve("", user.language, user.detected_language, identity.language_hint)
            message.language = language
            return record_checkin(self, session, message, conversation, user, identity, language), None
        text = (message.text or "") if kind == "text" else ""
        is_payload = text.startswith("/")
        # a place name says nothing about the reader's language (盛岡市 is not Chinese): known language first
        place = not is_payload and self.areas.find(text) is not None and _menu_language(user, identity) is not None
        language, detected = resolve(
            "" if is_payload or place else text, user.language, user.detected_language, identity.language_hint
        )
        if detected:
            user.detected_language = detected
        message.language = language

        if kind != "delete_data":
            self._attach_to_case(session, conversation, message, language)
            if conversation.handler == "staff":
                return self._with_staff(session, message, conversation, user, identity, language, text), None
        limited = self._rate_limited(session, message, identity, kind, text, language)
        if limited is not None:
            return limited, None
        if text.startswith(FEEDBACK_PAYLOAD):
            return self._feedback(session, message, conversation, user, identity, language, text), None

        if kind == "welcome":
            welcome = self.reply("welcome", language, self._language_buttons())
            return [*self._disaster_notice(session, language), welcome], None  # quick replies: last message
        if kind == "unsupported":
            return [self.reply("unsupported_message", language)], None
        if kind == "help":
            return [self.reply("help", language), *self._disaster_notice(session, language)], None
        if kind == "language_menu":
            return [self.reply("language_menu", language, self._language_buttons())], None
        if kind == "area_menu":
            return self._area_menu(session, conversation, user, identity, language, message.text or ""), None
        if kind == "staff":
            conversation.failed_understandings = 0
            return [self._handoff(session, conversation, user, identity, language, "requested")], None
        if kind == "delete_data":
            forget(session, user, keep_message_id=message.id)
            return [self.reply("data_deleted", language)], None

        if not has_words(text):
            return [self.reply("empty_prompt", language)], None

        chosen = self.language_named(text)
        if chosen:
            user.language = chosen
            message.language = chosen
            return [self.reply("language_changed", chosen)], None

        guidance = self._safety_net(session, conversation, user, identity, language, text)
        if guidance is not None:
            return guidance, None

        area = self._area_named(conversation, user, language, text)
        if area is not None:
            return area, None

        waiting = session.scalars(
            select(Message.id).where(
                Message.conversation_id == conversation.id,
                Message.direction == "in",
                Message.status == "waiting_engine",
                Message.id != message.id,
            )
        ).all()
        earlier_open = session.scalar(select(exists(
            select(Message.id).where(
                Message.conversation_id == conversation.id, Message.direction == "in",
                Message.status.in_(OPEN_INBOUND), Message.id < message.id,
            )
        )))
        if earlier_open:
            message.status = "waiting_engine"  # answered in order, after the older ones
            return [], None
        engine_text = text[: self.engine_message_chars]
        session.commit()  # no write lock (SQLite) or row lock is held while the engine thinks
        if connector is not None:
            await self._best_effort(connector.thinking(identity.platform_user_id))
        try:
            reply = await self.engine.ask(f"conv-{conversation.id}", engine_text, language)
        except EngineUnavailable:
            message.status = "waiting_engine"
            told = waiting or (message.attempts or 0) > 1  # the user hears "please wait" once
            return ([] if told else [self.reply("please_wait", language)]), None
        replies = self._render(session, reply, conversation, user, identity, language)
        if len(text) > self.engine_message_chars and replies:
            replies.insert(0, self.reply("too_long", language))
        return replies, reply

    def _rate_limited(
        self, session: Session, message: Message, identity: Identity, kind: str, text: str, language: str
    ) -> list[Reply] | None:
        """None to answer; else what a user over the rate limit gets (one notice, then nothing).
        An emergency and a request to delete one's data are always answered."""
        if self.limiter is None or kind == "delete_data":
            return None
        if kind == "text" and has_words(text) and self.safety.check(text) is not None:
            return None
        verdict = self.limiter.judge(session, message, identity)
        if verdict == ANSWER:
            return None
        message.status = "limited"
        log.info("rate limit: message=%s identity=%s %s", message.id, identity.id, verdict)
        return [self.reply("rate_limited", language)] if verdict == NOTIFY else []

    # ------------------------------------------------------------------ the user's area

    def _area_menu(
        self, session: Session, conversation: Conversation, user: User, identity: Identity, language: str, text: str
    ) -> list[Reply]:
        """``/area`` asks which municipality the user lives in; ``/area 一関市`` sets it at once."""
        argument = area_argument(text) or ""
        if argument and has_words(argument):
            guidance = self._safety_net(session, conversation, user, identity, language, argument)
            if guidance is not None:
                return guidance
            conversation.area_prompted = True
            named = self._area_named(conversation, user, language, argument)
            return named or [self.reply("area_unknown", language, example=self.areas.example(language))]
        conversation.area_prompted = True
        replies = [self.reply("area_prompt", language, example=self.areas.example(language))]
        current = self.areas.get(user.area)
        if current is not None:
            replies.insert(0, self.reply("area_current", language, area=self.areas.display(current, language)))
        return replies

    def _area_named(self, conversation: Conversation, user: User, language: str, text: str) -> list[Reply] | None:
        """The whole message names a municipality: it becomes the user's area. After the area prompt, a
        short message that names none is told so, once. Else None (the conversation goes on)."""
        prompted, conversation.area_prompted = conversation.area_prompted, False
        if text.startswith("/"):  # a button's payload
            return None
        municipality = self.areas.find(text)
        if municipality is not None:
            user.area = municipality.name
            log.info("user=%s gave their area", user.id)
            return [self.reply("area_set", language, area=self.areas.display(municipality, language))]
        if prompted and len(text) <= MAX_MESSAGE_CHARS:
            return [self.reply("area_unknown", language, example=self.areas.example(language))]
        return None

    # ------------------------------------------------------------------ rendering

    def reply(self, key: str, language: str, buttons: Sequence[Button] = (), **extra: str) -> Reply:
        """A message of ``messages.yml`` in ``language`` (region values and ``extra`` filled in)."""
        return Reply(text=self.kb.message(key, language, **extra), buttons=tuple(buttons), key=f"msg:{key}")

    def _answer(self, entry_id: str, language: str) -> Reply:
        entry = self.kb.entries[entry_id]
        body = self.kb.answer(entry_id, language)
        checked = self.kb.message("source_label", language, date=entry.last_checked.isoformat())
        buttons = tuple(
            Button(self.kb.title(related, language), choose_payload(related))
            for related in entry.related
            if related in self.kb.entries
        )[:SUGGESTIONS]
        feedback = (
            Button(self.kb.message("button_helpful", language), feedback_payload(entry_id, True)),
            Button(self.kb.message("button_not_helpful", language), feedback_payload(entry_id, False)),
        )
        return Reply(text=f"{body}\n\n{checked}", buttons=buttons + feedback, key=f"faq:{entry_id}")

    def _render(
        self,
        session: Session,
        reply: EngineReply,
        conversation: Conversation,
        user: User,
        identity: Identity,
        language: str,
    ) -> list[Reply]:
        replies: list[Reply] = []
        for response in reply.responses:
            custom = response.get("custom") or {}
            if "answer" in custom:
                conversation.failed_understandings = 0
                if custom["answer"] in self.kb.entries:
                    replies.append(self._answer(str(custom["answer"]), language))
                else:
                    replies.append(self.reply("help", language))
            elif custom.get("suggest"):
                conversation.failed_understandings += 1
                replies.append(self._suggest(reply, language, disaster_first=disaster_mode_on(session)))
            elif custom.get("offer_staff") and reply.intent == "nlu_fallback":
                conversation.failed_understandings = 0  # the second failure in a row: a case, no question
                replies.append(self._handoff(session, conversation, user, identity, language, "fallback"))
            elif custom.get("offer_staff"):
                conversation.failed_understandings += 1
                replies.append(
                    self.reply(
                        "offer_staff",
                        language,
                        [
                            Button(self.kb.message("button_staff_yes", language), "/affirm"),
                            Button(self.kb.message("button_staff_no", language), "/deny"),
                        ],
                    )
                )
            elif custom.get("handoff"):
                conversation.failed_understandings = 0
                reason = "fallback" if reply.intent == "affirm" else "requested"
                replies.append(self._handoff(session, conversation, user, identity, language, reason))
            elif custom.get("language_menu"):
                replies.append(self.reply("language_menu", language, self._language_buttons()))
            elif "message" in custom:
                conversation.failed_understandings = 0
                replies.append(self.reply(str(custom["message"]), language))
            else:
                log.warning("engine response without a known key: %s", sorted(custom))
        return replies

    def _language_buttons(self) -> list[Button]:
        return [Button(self.kb.language_label(code), self.kb.language_label(code)) for code in LANGUAGES]

    def _handoff(
        self,
        session: Session,
        conversation: Conversation,
        user: User,
        identity: Identity,
        language: str,
        reason: str,
        topic: str | None = None,
    ) -> Reply:
        self.escalate(session, conversation, user, identity, reason, urgent=False, language=language, topic=topic)
        when = self.when_staff_reply(language)
        if disaster_mode_on(session):  # the regional multilingual disaster desk first
            when = f"{self.kb.message('handoff_when_disaster', language)}\n{when}"
        return self.reply("handoff_created", language, when=when)

    def when_staff_reply(self, language: str) -> str:
        """"Staff are working now" or, out of hours, when they next start, in ``language``."""
        now = self.clock()
        if self.hours.is_open(now):
            return self.kb.message("handoff_when_open", language)
        return self.kb.message("handoff_when_closed", language, next_open=self.hours.describe_next_open(now, language))

    def _feedback(
        self,
        session: Session,
        message: Message,
        conversation: Conversation,
        user: User,
        identity: Identity,
        language: str,
        text: str,
    ) -> list[Reply]:
        """A thumbs-up or thumbs-down on an answer, handled here (never sent to the engine)."""
        try:
            data = json.loads(text[len(FEEDBACK_PAYLOAD):] or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        entry_id = str(data.get("answer") or "")
        helpful = data.get("helpful") is True
        message.intent = "feedback_helpful" if helpful else "feedback_not_helpful"
        message.payload = {"feedback": {"answer": entry_id, "helpful": helpful}}
        log.info("feedback helpful=%s answer=%s conversation=%s", helpful, entry_id or "-", conversation.id)
        if helpful:
            return [self.reply("feedback_thanks", language)]
        topic = entry_id if entry_id in self.kb.entries else None
        return [self._handoff(session, conversation, user, identity, language, "feedback", topic=topic)]

    # ------------------------------------------------------------------ while staff hold the conversation

    def _attach_to_case(
        self, session: Session, conversation: Conversation, message: Message, language: str
    ) -> Escalation | None:
        """A user message joins the conversation's open case: staff get it in Japanese, and it reopens the case."""
        case = session.scalar(
            select(Escalation)
            .where(Escalation.conversation_id == conversation.id, Escalation.status.in_(OPEN_CASE))
            .order_by(Escalation.id.desc())
            .limit(1)
        )
        if case is None:
            return None
        mark_for_staff(message, language)
        if case.status == "waiting" and message.direction == "in":
            case.status = "open"
        case.updated_at = utcnow()
        return case

    def _safety_net(
        self,
        session: Session,
        conversation: Conversation,
        user: User,
        identity: Identity,
        language: str,
        text: str,
    ) -> list[Reply] | None:
        """119/110 guidance and an urgent case when the message is life-threatening, else None."""
        emergency = self.safety.check(text)
        if emergency is None:
            return None
        conversation.area_prompted = False
        self.escalate(session, conversation, user, identity, "safety", urgent=True, language=language)
        log.warning("safety net: kind=%s conversation=%s handler=%s", emergency.kind, conversation.id,
                    conversation.handler)
        return [self.reply(f"emergency_{emergency.kind}", language), self.reply("emergency_followup", language)]

    def _with_staff(
        self,
        session: Session,
        message: Message,
        conversation: Conversation,
        user: User,
        identity: Identity,
        language: str,
        text: str,
    ) -> list[Reply]:
        """Staff hold the conversation: the assistant is silent, except the safety net and one notice."""
        message.status = "staff"
        guidance = self._safety_net(session, conversation, user, identity, language, text) if has_words(text) else None
        if guidance is not None:
            return guidance
        if conversation.staff_notice_sent:
            return []
        conversation.staff_notice_sent = True
        return [self.reply("staff_handling", language)]

    @staticmethod
    async def _best_effort(call: Any) -> Any:
        """A courtesy call to the platform (typing indicator, profile): never blocks or breaks an answer."""
        try:
            return await asyncio.wait_for(call, THINKING_TIMEOUT)
        except Exception as exc:  # a courtesy must not cost the answer
            log.info("best-effort platform call failed: %s", type(exc).__name__)
            return None

    def _suggest(self, reply: EngineReply, language: str, disaster_first: bool = False) -> Reply:
        keys = [
            item["key"].split("/", 1)[1]
            for item in reply.parse.get("faq_ranking") or []
            if isinstance(item.get("key"), str) and "/" in item["key"]
        ]
        keys = [key for key in keys if key in self.kb.entries]
        if disaster_first:
            keys.sort(key=lambda key: self.kb.entries[key].topic != "disaster")
        keys = keys[:SUGGESTIONS]
        buttons = [Button(self.kb.title(key, language), choose_payload(key)) for key in keys]
        buttons.append(Button(self.kb.message("suggest_none", language), "/deny"))
        return self.reply("suggest_intro", language, buttons)

    # ------------------------------------------------------------------ escalations

    def escalate(
        self,
        session: Session,
        conversation: Conversation,
        user: User,
        identity: Identity,
        reason: str,
        urgent: bool,
        language: str,
        topic: str | None = None,
    ) -> Escalation:
        """Open a case for the conversation, or update its open one (one open case per conversation)."""
        existing = session.scalar(
            select(Escalation)
            .where(Escalation.conversation_id == conversation.id, Escalation.status.in_(OPEN_CASE))
            .order_by(Escalation.id.desc())
            .limit(1)
        )
        if existing is not None:
            existing.urgent = existing.urgent or urgent
            if existing.status == "waiting":
                existing.status = "open"
            if topic:
                existing.topic, existing.category = self._topic(topic)
            existing.updated_at = utcnow()
            log.info("escalation=%s updated reason=%s urgent=%s conversation=%s", existing.id, reason, urgent,
                     conversation.id)
            return existing
        session.flush()
        rows = session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation.id)
            .order_by(Message.id.desc())
            .limit(TRANSCRIPT_LENGTH)
        ).all()
        transcript = [
            {
                "id": row.id,
                "direction": row.direction,
                "text": row.text,
                "language": row.language,
                "intent": row.intent,
                "confidence": row.confidence,
                "key": (row.payload or {}).get("key"),
                "at": row.created_at.isoformat() if row.created_at else None,
            }
            for row in reversed(rows)
        ]
        for row in rows:
            if row.direction == "in":
                mark_for_staff(row, row.language or language)
        if topic is None:
            topic = self._last_topic(rows)
        entry_topic, category = self._topic(topic) if topic else (None, None)
        escalation = Escalation(
            conversation_id=conversation.id,
            user_id=user.id,
            reason=reason,
            urgent=urgent,
            language=language,
            platform=identity.platform,
            transcript=transcript,
            topic=entry_topic,
            category=category,
            night=not self.hours.is_open(self.clock()),
            first_message_id=min((row.id for row in rows), default=None),
        )
        session.add(escalation)
        session.flush()
        log.info("escalation=%s reason=%s urgent=%s conversation=%s", escalation.id, reason, urgent, conversation.id)
        return escalation

    def _topic(self, key: str) -> tuple[str | None, str | None]:
        """``(topic, category)`` of a knowledge-base entry id, or ``(key, None)`` for an intent."""
        entry = self.kb.entries.get(key)
        if entry is not None:
            return entry.topic, entry.category
        return key[:128], None

    def _last_topic(self, rows: Sequence[Message]) -> str | None:
        """The entry the assistant last answered or ranked first, else the last intent (rows: newest first)."""
        for row in rows:
            key = str((row.payload or {}).get("key") or "")
            if row.direction == "out" and key.startswith("faq:"):
                return key[4:]
            if row.direction == "in":
                ranking = ((row.payload or {}).get("parse") or {}).get("faq_ranking") or []
                first = ranking[0].get("key") if ranking and isinstance(ranking[0], dict) else None
                if isinstance(first, str) and "/" in first:
                    return first.split("/", 1)[1]
                if row.intent and row.intent not in ("nlu_fallback", "ask_human", "affirm", "deny"):
                    return row.intent
        return None

    # ------------------------------------------------------------------ language names

    @staticmethod
    def _build_language_names(kb: KnowledgeBase) -> dict[str, str]:
        names: dict[str, str] = {}
        for code, info in kb.languages.items():
            for name in [info.get("label", ""), *list(info.get("names") or [])]:
                if name:
                    names[_fold_name(str(name))] = code
        return names

    def language_named(self, text: str) -> str | None:
        """The language a message names, when the whole message is a language's name."""
        return self._language_names.get(_fold_name(text))

    # ------------------------------------------------------------------ worker

    async def retry_waiting(self, limit: int = 100) -> int:
        """Answer messages that waited for the engine, oldest first; returns how many were answered.

        Also messages a stopped worker had claimed (``processing`` past the lease).
        """
        self._give_up_poison()
        with self.sessions() as session:
            rows = session.execute(
                select(Message.id, Message.conversation_id)
                .where(Message.direction == "in",
                       or_(and_(Message.status.in_(("waiting_engine", "received")),
                                Message.created_at < utcnow() - dt.timedelta(seconds=1)),
                           self._lease_expired()))
                .order_by(Message.id)
                .limit(limit)
            ).all()
        by_conversation: dict[int, list[int]] = {}
        for message_id, conversation_id in rows:
            by_conversation.setdefault(conversation_id, []).append(message_id)
        answered = 0
        engine_down = False
        slots = asyncio.Semaphore(self.max_in_flight)

        async def one_conversation(message_ids: list[int]) -> None:
            """Its messages in order; conversations side by side, at most ``max_in_flight`` at a time."""
            nonlocal answered, engine_down
            for message_id in message_ids:
                if engine_down:
                    return
                async with slots:
                    with self._answering():
                        await self._process_one(message_id, deliver=True)
                if self._still_waiting(message_id):
                    if not await self.engine.ready():
                        engine_down = True
                    return
                answered += 1

        await asyncio.gather(*(one_conversation(ids) for ids in by_conversation.values()))
        return answered

    def outbound_since(
        self, platform: str, platform_user_id: str, after: int, limit: int = 100
    ) -> list[tuple[int, Reply]]:
        """Messages sent to one platform user after message ``after``, oldest first."""
        with self.sessions() as session:
            rows = session.scalars(
                _sent_to(platform, platform_user_id).where(Message.id > after).order_by(Message.id).limit(limit)
            ).all()
            return [(row.id, reply_from_row(row)) for row in rows]

    def button_payload(self, platform: str, platform_user_id: str, message_id: int, index: int) -> str | None:
        """The payload of button ``index`` of an outbound message sent to this platform user, if any."""
        with self.sessions() as session:
            row = session.scalar(_sent_to(platform, platform_user_id).where(Message.id == message_id))
            buttons = ((row.payload or {}).get("buttons") or []) if row is not None else []
            if 0 <= index < len(buttons):
                return str(buttons[index]["payload"])
            return None

    def reply_ids(self, message_id: int) -> list[int]:
        with self.sessions() as session:
            return list(
                session.scalars(select(Message.id).where(Message.in_reply_to == message_id).order_by(Message.id))
            )

    def replies_to(self, message_id: int) -> tuple[Reply, ...]:
        with self.sessions() as session:
            rows = session.scalars(
                select(Message).where(Message.in_reply_to == message_id).order_by(Message.id)
            ).all()
            return tuple(reply_from_row(row) for row in rows)

    def _disaster_notice(self, session: Session, language: str) -> list[Reply]:
        """In disaster mode, the welcome and help point to the regional multilingual disaster desk."""
        return [self.reply("disaster_mode_notice", language)] if disaster_mode_on(session) else []


def _menu_language(user: User, identity: Identity) -> str | None:
    """The language the user is answered in by default (their choice, else detected, else the platform's)."""
    for language in (user.language, user.detected_language, identity.language_hint):
        if language in LANGUAGES:
            return language
    return None


def _sent_to(platform: str, platform_user_id: str) -> Select[Message]:
    """Outbound messages to one platform user."""
    return (
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .join(Identity, Identity.id == Conversation.identity_id)
        .where(
            Identity.platform == platform,
            Identity.platform_user_id == platform_user_id,
            Message.direction == "out",
        )
    )


def reply_from_row(row: Message) -> Reply:
    payload = row.payload or {}
    buttons = tuple(Button(b["title"], b["payload"]) for b in payload.get("buttons") or [])
    return Reply(text=row.text, buttons=buttons, key=str(payload.get("key") or ""), message_id=row.id)


def feedback_payload(entry_id: str, helpful: bool) -> str:
    return FEEDBACK_PAYLOAD + json.dumps({"answer": entry_id, "helpful": helpful}, separators=(",", ":"))


def mark_for_staff(message: Message, language: str) -> None:
    """Queue a user message's Japanese for staff (Japanese needs none; the worker translates the rest)."""
    if message.translation_status is not None or message.direction != "in":
        return
    text = message.text or ""
    if not has_words(text) or text.startswith("/"):
        return
    if language in JAPANESE:
        message.text_ja, message.translated_by, message.translation_status = text, "original", "done"
    else:
        message.translation_status = "pending"


def choose_payload(entry_id: str) -> str:
    return "/choose_answer" + json.dumps({"answer": entry_id}, separators=(",", ":"))


def area_argument(text: str) -> str | None:
    """What follows ``/area`` (``""`` for the bare command), or None when the text is not the command."""
    match = _AREA_COMMAND.match(text.strip())
    return (match.group(1) or "").strip() if match else None


def _fold_name(text: str) -> str:
    folded = normalise(text)
    folded = re.sub(r"[\s\-_.,!?。、！？「」'\"()（）]+", " ", folded).strip()
    return folded
