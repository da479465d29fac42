"""The staff side of the help desk: the queue, a case, replies, hand-back, canned replies, KB proposals.

The console (``bot/web/console.py``) and the JSON API (``bot/web/api.py``) are thin layers over
:class:`HelpDesk`; every staff action goes through it and is audited (``bot.staff.audit``).
Staff write Japanese; a reply reaches the user translated (``bot/translation.py``) with a short
"translated by machine" note and the Japanese original, or as Japanese with an easy-Japanese note
when no model exists for the pair. User messages are translated into Japanese for staff in the
background (:meth:`HelpDesk.translate_pending`), never on the webhook's path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.orm import Session, aliased

from bot.db.models import (
    AuditEntry,
    CannedReply,
    Conversation,
    Escalation,
    Identity,
    KbSuggestion,
    Message,
    StaffUser,
    utcnow,
)
from bot.languages import LANGUAGES
from bot.pipeline import JAPANESE, OPEN_CASE, Assistant
from bot.ports import Reply
from bot.staff import StaffMember, audit

log = logging.getLogger(__name__)

QUEUE_PAGE_SIZE = 50
SUMMARY_CHARS = 80


class TranslationLike(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def via(self) -> tuple[str, ...]: ...


class TranslatorLike(Protocol):
    """What the help desk needs from ``bot.translation.Translator``."""

    def can_translate(self, source: str, target: str) -> bool: ...

    async def translate(self, text: str, source: str, target: str) -> TranslationLike | None: ...


class HelpDeskError(ValueError):
    """A staff action that cannot be done (no such case, not allowed, empty reply); message in Japanese."""


class NotFound(HelpDeskError):
    """No such escalation, canned reply or suggestion."""


class Forbidden(HelpDeskError):
    """The action needs the admin role."""


@dataclass(frozen=True)
class QueueFilter:
    """Queue filters; ``None`` means any. ``status`` defaults to the unresolved cases."""

    status: tuple[str, ...] = ("open", "assigned", "waiting")
    language: str | None = None
    topic: str | None = None
    urgent: bool | None = None
    older_than: dt.timedelta | None = None
    """Only cases opened at least this long ago."""
    newer_than: dt.timedelta | None = None
    """Only cases opened at most this long ago."""
    assignee_id: int | None = None


@dataclass(frozen=True)
class QueueRow:
    """One case in the queue."""

    id: int
    status: str
    urgent: bool
    night: bool
    reason: str
    language: str | None
    platform: str
    topic: str | None
    category: str | None
    summary_ja: str
    """The user's first messages in Japanese, truncated (or the original while not yet translated)."""
    message_count: int
    """Messages in the conversation since the case opened (both directions)."""
    unanswered: int
    """User messages after the last staff reply."""
    assignee: str | None
    """The assignee's display name."""
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class QueuePage:
    rows: tuple[QueueRow, ...]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True)
class TranscriptLine:
    """One message of a case, the original and the Japanese side by side."""

    message_id: int
    direction: str
    """``in`` (the user), ``out`` (the assistant or staff)."""
    author: str
    """``user``, ``assistant`` or ``staff``."""
    text: str
    text_ja: str | None
    """Japanese for staff: a translation, the original when Japanese, None while pending/unavailable."""
    translation_status: str | None
    """``pending``, ``done``, ``unavailable`` or None (not needed: assistant messages, staff replies)."""
    translated_by: str | None
    language: str | None
    intent: str | None
    confidence: float | None
    key: str | None
    """What an assistant message was rendered from (``faq:<id>``, ``msg:<key>``, ``staff``)."""
    staff_name: str | None
    at: dt.datetime


@dataclass(frozen=True)
class Attempt:
    """What the assistant understood of one user message and which answers it considered."""

    message_id: int
    intent: str | None
    confidence: float | None
    answers: tuple[tuple[str, str, float], ...]
    """``(entry id, Japanese title, confidence)``, best first."""


@dataclass(frozen=True)
class CaseView:
    """Everything the case page shows."""

    id: int
    status: str
    reason: str
    urgent: bool
    night: bool
    language: str | None
    language_label: str
    platform: str
    topic: str | None
    category: str | None
    summary_ja: str
    handler: str
    """``staff`` while staff hold the conversation, else ``bot``."""
    conversation_id: int
    assignee_id: int | None
    assignee: str | None
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    transcript: tuple[TranscriptLine, ...]
    attempts: tuple[Attempt, ...]
    can_translate_reply: bool
    """A model exists for Japanese → the user's language (else the user gets Japanese)."""


@dataclass(frozen=True)
class Preview:
    """The reply as the user will receive it; staff may edit ``translation`` before sending."""

    target_language: str
    translation: str | None
    """None when no model exists for the pair (or the user reads Japanese)."""
    via: str | None
    notice_ja: str | None
    """Shown to staff when there is no translation: what the user will receive instead."""
    texts: tuple[str, ...] = field(default_factory=tuple)
    """The messages that will be delivered, in order."""


@dataclass(frozen=True)
class ReplyResult:
    message_ids: tuple[int, ...]
    delivered: bool
    """False when the platform failed now (the core retries with back-off)."""
    translated: bool


@dataclass(frozen=True)
class CannedReplyView:
    id: int
    title: str
    text_ja: str
    updated_at: dt.datetime


@dataclass(frozen=True)
class SuggestionView:
    id: int
    escalation_id: int | None
    question_ja: str
    answer_ja: str
    status: str
    proposed_by: str | None
    decided_by: str | None
    draft_path: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class AuditView:
    id: int
    staff: str | None
    action: str
    target_type: str | None
    target_id: str | None
    detail: dict[str, Any] | None
    at: dt.datetime


NO_MODEL_NOTICE = (
    "{label}への翻訳モデルがありません。利用者には日本語の原文が、{label}の定型の案内文と一緒に届きます。"
)
TRANSLATION_FAILED_NOTICE = "翻訳できませんでした。利用者には日本語の原文が、{label}の定型の案内文と一緒に届きます。"
JAPANESE_USER_NOTICE = "利用者は日本語で相談しています。返信はそのまま届きます。"
EASY_JAPANESE_NOTICE = (
    "利用者はやさしい日本語を選んでいます。返信は日本語のまま、案内文と一緒に届きます。"
    "短い文で、漢字に読みを添えてください。"
)
TRANSCRIPT_LIMIT = 500
KB_TOPICS = ("status_of_residence", "job_hunting", "daily_life", "medical", "disaster", "services")


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _via(translation: TranslationLike) -> str:
    via = tuple(translation.via or ())
    return "argos" + (f" via {'+'.join(via)}" if via else "")


def _short(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class HelpDesk:
    """The staff-side service over the pipeline's storage and connectors.

    Args:
        assistant: the pipeline (storage, catalog, office hours, delivery with retries).
        translator: ``bot.translation.Translator`` (or None: every reply goes out in Japanese).
        drafts_dir: where accepted knowledge-base proposals are written as draft entries.
    """

    def __init__(self, assistant: Assistant, translator: TranslatorLike | None, drafts_dir: Path) -> None:
        self.assistant = assistant
        self.translator = translator
        self.drafts_dir = drafts_dir
        self.kb = assistant.kb
        self.sessions = assistant.sessions

    # ------------------------------------------------------------------ queue

    def queue(self, filters: QueueFilter = QueueFilter(), page: int = 1, per_page: int = QUEUE_PAGE_SIZE) -> QueuePage:
        """One page of the queue: urgent first, then night cases, then oldest.

        Paginated in SQL; at most five queries whatever the page size (count, page, counts, summaries).
        """
        page = max(1, page)
        per_page = min(max(1, per_page), 200)
        now = utcnow()
        conditions: list[Any] = []
        if filters.status:
            conditions.append(Escalation.status.in_(filters.status))
        if filters.language:
            conditions.append(Escalation.language == filters.language)
        if filters.topic:
            conditions.append(Escalation.topic == filters.topic)
        if filters.urgent is not None:
            conditions.append(Escalation.urgent == filters.urgent)
        if filters.older_than is not None:
            conditions.append(Escalation.created_at <= now - filters.older_than)
        if filters.newer_than is not None:
            conditions.append(Escalation.created_at >= now - filters.newer_than)
        if filters.assignee_id is not None:
            conditions.append(Escalation.assignee_id == filters.assignee_id)
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(Escalation).where(*conditions)) or 0
            rows = session.execute(
                select(
                    Escalation.id, Escalation.status, Escalation.urgent, Escalation.night, Escalation.reason,
                    Escalation.language, Escalation.platform, Escalation.topic, Escalation.category,
                    Escalation.summary_ja, Escalation.conversation_id, Escalation.first_message_id,
                    Escalation.created_at, Escalation.updated_at, StaffUser.display_name,
                )
                .outerjoin(StaffUser, StaffUser.id == Escalation.assignee_id)
                .where(*conditions)
                .order_by(Escalation.urgent.desc(), Escalation.night.desc(), Escalation.created_at, Escalation.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
            ids = [row.id for row in rows]
            counts = self._counts(session, ids) if ids else {}
            missing = [row.id for row in rows if not row.summary_ja]
            originals = self._first_texts(session, missing) if missing else {}
        return QueuePage(
            rows=tuple(
                QueueRow(
                    id=row.id, status=row.status, urgent=bool(row.urgent), night=bool(row.night), reason=row.reason,
                    language=row.language, platform=row.platform, topic=row.topic, category=row.category,
                    summary_ja=row.summary_ja or originals.get(row.id, ""),
                    message_count=counts.get(row.id, (0, 0))[0], unanswered=counts.get(row.id, (0, 0))[1],
                    assignee=row.display_name, created_at=_aware(row.created_at), updated_at=_aware(row.updated_at),
                )
                for row in rows
            ),
            total=total,
            page=page,
            per_page=per_page,
        )

    @staticmethod
    def _counts(session: Session, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Per case: messages since it opened, and user text messages after the last staff reply.

        Correlated subqueries that filter on ``(conversation_id, id)`` only (the rest is counted with
        CASE), so each is an index range scan for one page row, whatever the planner's statistics say.
        """
        since = func.coalesce(Escalation.first_message_id, 0)
        staff_message = aliased(Message)
        last_staff = (
            select(func.coalesce(func.max(case((staff_message.staff_id.is_not(None), staff_message.id))), 0))
            .where(staff_message.conversation_id == Escalation.conversation_id, staff_message.id >= since)
            .correlate_except(staff_message)
            .scalar_subquery()
        )
        from_user = and_(Message.direction == "in", Message.kind == "text", Message.id > last_staff)
        counts = (
            select(func.count(Message.id), func.count(case((from_user, Message.id))))
            .where(Message.conversation_id == Escalation.conversation_id, Message.id >= since)
        )
        total = counts.with_only_columns(func.count(Message.id)).scalar_subquery()
        unanswered = counts.with_only_columns(func.count(case((from_user, Message.id)))).scalar_subquery()
        result = session.execute(select(Escalation.id, total, unanswered).where(Escalation.id.in_(ids))).all()
        return {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in result}

    @staticmethod
    def _first_texts(session: Session, ids: Sequence[int]) -> dict[int, str]:
        """The first user message of each case, as written (for cases not summarised in Japanese yet)."""
        written = and_(
            Message.direction == "in", Message.kind == "text", Message.text != "", ~Message.text.startswith("/")
        )
        first = (
            select(func.min(case((written, Message.id))))
            .where(
                Message.conversation_id == Escalation.conversation_id,
                Message.id >= func.coalesce(Escalation.first_message_id, 0),
            )
            .scalar_subquery()
        )
        firsts = {row[1]: row[0] for row in session.execute(select(Escalation.id, first).where(Escalation.id.in_(ids)))
                  if row[1] is not None}
        if not firsts:
            return {}
        rows = session.execute(select(Message.id, Message.text, Message.text_ja).where(Message.id.in_(firsts))).all()
        return {firsts[row[0]]: _short(row[2] or row[1]) for row in rows}

    def topics(self) -> list[str]:
        """Topics present among unresolved cases (for the filter's choices)."""
        with self.sessions() as session:
            return sorted(
                topic
                for topic in session.scalars(
                    select(Escalation.topic).where(Escalation.status.in_(OPEN_CASE)).distinct()
                )
                if topic
            )

    def language_choices(self) -> Sequence[tuple[str, str]]:
        """``(code, label)`` for the language filter."""
        return [(code, self.kb.language_label(code)) for code in LANGUAGES]

    # ------------------------------------------------------------------ one case

    def case(self, escalation_id: int) -> CaseView:
        """The case page's content; raises :class:`NotFound`."""
        with self.sessions() as session:
            found = session.execute(
                select(Escalation, Conversation.handler, StaffUser.display_name)
                .join(Conversation, Conversation.id == Escalation.conversation_id)
                .outerjoin(StaffUser, StaffUser.id == Escalation.assignee_id)
                .where(Escalation.id == escalation_id)
            ).first()
            if found is None:
                raise NotFound(f"相談 {escalation_id} はありません。")
            escalation, handler, assignee = found
            author = aliased(StaffUser)
            rows = session.execute(
                select(Message, author.display_name)
                .outerjoin(author, author.id == Message.staff_id)
                .where(
                    Message.conversation_id == escalation.conversation_id,
                    Message.id >= (escalation.first_message_id or 0),
                )
                .order_by(Message.id.desc())
                .limit(TRANSCRIPT_LIMIT)
            ).all()
        lines: list[TranscriptLine] = []
        attempts: list[Attempt] = []
        for message, staff_name in reversed(rows):
            payload = message.payload or {}
            key = payload.get("key")
            is_staff = message.direction == "out" and (message.staff_id is not None or key == "staff")
            lines.append(
                TranscriptLine(
                    message_id=message.id,
                    direction=message.direction,
                    author="user" if message.direction == "in" else "staff" if is_staff else "assistant",
                    text=message.text or "",
                    text_ja=message.text_ja,
                    translation_status=message.translation_status,
                    translated_by=message.translated_by,
                    language=message.language,
                    intent=message.intent,
                    confidence=message.confidence,
                    key=str(key) if key else None,
                    staff_name=staff_name,
                    at=_aware(message.created_at),
                )
            )
            parse = payload.get("parse") if message.direction == "in" else None
            if parse or (message.direction == "in" and message.intent):
                attempts.append(self._attempt(message, parse or {}))
        language = escalation.language or "en"
        return CaseView(
            id=escalation.id,
            status=escalation.status,
            reason=escalation.reason,
            urgent=escalation.urgent,
            night=escalation.night,
            language=escalation.language,
            language_label=self.kb.language_label(language),
            platform=escalation.platform,
            topic=escalation.topic,
            category=escalation.category,
            summary_ja=escalation.summary_ja or "",
            handler=handler,
            conversation_id=escalation.conversation_id,
            assignee_id=escalation.assignee_id,
            assignee=assignee,
            created_at=_aware(escalation.created_at),
            resolved_at=_aware(escalation.resolved_at) if escalation.resolved_at else None,
            transcript=tuple(lines),
            attempts=tuple(attempts),
            can_translate_reply=self._can_reply_translated(language),
        )

    def _attempt(self, message: Message, parse: dict[str, Any]) -> Attempt:
        answers = []
        for item in parse.get("faq_ranking") or []:
            key = item.get("key") if isinstance(item, dict) else None
            if not isinstance(key, str) or "/" not in key:
                continue
            entry_id = key.split("/", 1)[1]
            title = self.kb.title(entry_id, "ja") if entry_id in self.kb.entries else entry_id
            answers.append((entry_id, title, float(item.get("confidence") or 0.0)))
        return Attempt(message_id=message.id, intent=message.intent, confidence=message.confidence,
                       answers=tuple(answers[:3]))

    def _can_reply_translated(self, language: str) -> bool:
        if language in JAPANESE:
            return False
        return self.translator is not None and self.translator.can_translate("ja", language)

    # ------------------------------------------------------------------ staff take a case

    def _load(self, session: Session, escalation_id: int) -> tuple[Escalation, Conversation, Identity]:
        escalation = session.get(Escalation, escalation_id)
        if escalation is None:
            raise NotFound(f"相談 {escalation_id} はありません。")
        conversation = session.get(Conversation, escalation.conversation_id)
        identity = session.get(Identity, conversation.identity_id) if conversation else None
        if conversation is None or identity is None:
            raise NotFound(f"相談 {escalation_id} の会話はありません。")
        return escalation, conversation, identity

    @staticmethod
    def _hold(conversation: Conversation) -> None:
        if conversation.handler != "staff":
            conversation.handler = "staff"
            conversation.staff_notice_sent = False

    def take_over(self, conversation_id: int, staff: StaffMember) -> int:
        """Staff take a conversation: its open case (or a new one, reason ``staff``), assigned to them."""
        with self.sessions() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(f"会話 {conversation_id} はありません。")
            identity = session.get(Identity, conversation.identity_id)
            user = identity.user if identity else None
            if identity is None or user is None:
                raise NotFound(f"会話 {conversation_id} の利用者はいません。")
            language = self._user_language(session, conversation, None)
            escalation = self.assistant.escalate(
                session, conversation, user, identity, "staff", urgent=False, language=language
            )
            escalation.assignee_id = staff.id
            if escalation.status == "open":
                escalation.status = "assigned"
            self._hold(conversation)
            audit(session, staff.id, "take_over", ("escalation", escalation.id), {"conversation": conversation.id})
            session.commit()
            log.info("staff=%s took over conversation=%s escalation=%s", staff.id, conversation.id, escalation.id)
            return escalation.id

    def assign(self, escalation_id: int, staff: StaffMember, assignee_id: int | None = None) -> None:
        """Assign a case (to ``staff`` themselves by default); the conversation goes to staff."""
        with self.sessions() as session:
            escalation, conversation, _ = self._load(session, escalation_id)
            if escalation.status == "resolved":
                raise HelpDeskError("解決済みの相談は担当を変えられません。")
            target = assignee_id if assignee_id is not None else staff.id
            assignee = session.get(StaffUser, target)
            if assignee is None or not assignee.active:
                raise NotFound("その担当者はいません。")
            escalation.assignee_id = target
            if escalation.status == "open":
                escalation.status = "assigned"
            escalation.updated_at = utcnow()
            self._hold(conversation)
            audit(session, staff.id, "assign", ("escalation", escalation.id), {"assignee": target})
            session.commit()

    # ------------------------------------------------------------------ replies

    def _user_language(self, session: Session, conversation: Conversation, escalation: Escalation | None) -> str:
        """The language to write to the user in: their choice, else their last message's, else the case's."""
        identity = session.get(Identity, conversation.identity_id)
        chosen = identity.user.language if identity is not None else None
        if chosen in LANGUAGES:
            return str(chosen)
        last = session.scalar(
            select(Message.language)
            .where(Message.conversation_id == conversation.id, Message.direction == "in",
                   Message.language.is_not(None))
            .order_by(Message.id.desc())
            .limit(1)
        )
        if last in LANGUAGES:
            return str(last)
        if escalation is not None and escalation.language in LANGUAGES:
            return str(escalation.language)
        return "en"

    async def preview(self, escalation_id: int, text_ja: str) -> Preview:
        """The translation of a Japanese reply into the user's language, or a notice when there is none."""
        text_ja = text_ja.strip()
        if not text_ja:
            raise HelpDeskError("返信が空です。")
        with self.sessions() as session:
            escalation, conversation, _ = self._load(session, escalation_id)
            language = self._user_language(session, conversation, escalation)
        return await self._preview(language, text_ja)

    async def _preview(self, language: str, text_ja: str) -> Preview:
        label = self.kb.language_label(language)
        if language == "ja":
            return Preview(language, None, None, JAPANESE_USER_NOTICE, (text_ja,))
        untranslated = (self.kb.message("staff_reply_untranslated", language) + "\n\n" + text_ja,)
        if language == "ja-easy":
            return Preview(language, None, None, EASY_JAPANESE_NOTICE, untranslated)
        if not self._can_reply_translated(language):
            return Preview(language, None, None, NO_MODEL_NOTICE.format(label=label), untranslated)
        assert self.translator is not None
        translation = await self.translator.translate(text_ja, "ja", language)
        if translation is None or not translation.text.strip():
            return Preview(language, None, None, TRANSLATION_FAILED_NOTICE.format(label=label), untranslated)
        return Preview(language, translation.text, _via(translation), None,
                       self._translated_texts(language, translation.text, text_ja))

    def _translated_texts(self, language: str, translation: str, text_ja: str) -> tuple[str, str]:
        return translation, self.kb.message("staff_reply_translated", language) + "\n\n" + text_ja

    async def reply(
        self, escalation_id: int, staff: StaffMember, text_ja: str, edited_translation: str | None = None
    ) -> ReplyResult:
        """Send a staff reply: translated + machine note + Japanese original (or Japanese + a note).

        The translation is made before any database transaction opens. The case becomes
        ``waiting`` (for the user) and is assigned to ``staff`` if nobody had it; the conversation
        stays with staff. Delivery goes through the conversation's connector; a platform failure
        leaves the messages to the core's retries (``delivered`` False).
        """
        preview = await self.preview(escalation_id, text_ja)
        text_ja = text_ja.strip()
        edited = bool(edited_translation and edited_translation.strip()) and preview.translation is not None
        texts = preview.texts
        if edited:
            assert edited_translation is not None
            texts = self._translated_texts(preview.target_language, edited_translation.strip(), text_ja)
        with self.sessions() as session:
            escalation, conversation, identity = self._load(session, escalation_id)
            last_inbound = session.scalar(
                select(func.max(Message.id)).where(
                    Message.conversation_id == conversation.id, Message.direction == "in"
                )
            )
            rows = [
                Message(
                    conversation_id=conversation.id, direction="out", platform=identity.platform, text=text,
                    language=preview.target_language, status="pending", in_reply_to=last_inbound,
                    payload={"key": "staff", "buttons": []}, staff_id=staff.id, text_ja=text_ja,
                    translated_by=("staff" if edited else preview.via) if preview.translation else None,
                )
                for text in texts
            ]
            session.add_all(rows)
            escalation.status = "waiting"
            escalation.assignee_id = escalation.assignee_id or staff.id
            escalation.updated_at = utcnow()
            self._hold(conversation)
            conversation.staff_notice_sent = True  # the reply itself tells the user staff are on it
            session.flush()
            ids = tuple(row.id for row in rows)
            audit(
                session, staff.id, "reply", ("escalation", escalation.id),
                {"language": preview.target_language, "translated": preview.translation is not None,
                 "via": preview.via, "edited": edited, "messages": list(ids)},
            )
            session.commit()
            platform, address = identity.platform, identity.platform_user_id
        replies = [Reply(text=text, key="staff") for text in texts]
        delivered = await self.assistant.deliver(platform, address, ids, replies)
        log.info("staff=%s replied escalation=%s messages=%s delivered=%s", staff.id, escalation_id, ids, delivered)
        return ReplyResult(ids, delivered, preview.translation is not None)

    async def hand_back(self, escalation_id: int, staff: StaffMember) -> None:
        """Resolve the case and give the conversation back to the assistant; the user is told."""
        await self._close(escalation_id, staff, "hand_back", tell=True)

    async def resolve(self, escalation_id: int, staff: StaffMember) -> None:
        """Close the case; if staff held the conversation it goes back to the assistant (user told)."""
        await self._close(escalation_id, staff, "resolve", tell=False)

    async def _close(self, escalation_id: int, staff: StaffMember, action: str, tell: bool) -> None:
        with self.sessions() as session:
            escalation, conversation, identity = self._load(session, escalation_id)
            held = conversation.handler == "staff"
            if escalation.status == "resolved" and not held:
                return
            escalation.status = "resolved"
            escalation.resolved_at = utcnow()
            escalation.updated_at = escalation.resolved_at
            conversation.handler = "bot"
            conversation.staff_notice_sent = False
            conversation.failed_understandings = 0
            ids: tuple[int, ...] = ()
            replies: list[Reply] = []
            if held or tell:
                language = self._user_language(session, conversation, escalation)
                text = self.kb.message("handed_back", language)
                last_inbound = session.scalar(
                    select(func.max(Message.id)).where(
                        Message.conversation_id == conversation.id, Message.direction == "in"
                    )
                )
                row = Message(
                    conversation_id=conversation.id, direction="out", platform=identity.platform, text=text,
                    language=language, status="pending", in_reply_to=last_inbound,
                    payload={"key": "msg:handed_back", "buttons": []}, staff_id=staff.id,
                )
                session.add(row)
                session.flush()
                ids, replies = (row.id,), [Reply(text=text, key="msg:handed_back")]
            audit(session, staff.id, action, ("escalation", escalation.id), {"handed_back": bool(ids)})
            session.commit()
            platform, address = identity.platform, identity.platform_user_id
        if ids:
            await self.assistant.deliver(platform, address, ids, replies)
        log.info("staff=%s %s escalation=%s", staff.id, action, escalation_id)

    # ------------------------------------------------------------------ canned replies

    def canned_replies(self) -> list[CannedReplyView]:
        with self.sessions() as session:
            return [
                CannedReplyView(row.id, row.title, row.text_ja, _aware(row.updated_at))
                for row in session.scalars(select(CannedReply).order_by(CannedReply.title, CannedReply.id))
            ]

    @staticmethod
    def _check_canned(title: str, text_ja: str) -> tuple[str, str]:
        title, text_ja = title.strip(), text_ja.strip()
        if not title or not text_ja:
            raise HelpDeskError("題名と本文を入力してください。")
        if len(title) > 128:
            raise HelpDeskError("題名は128文字までです。")
        return title, text_ja

    def create_canned(self, staff: StaffMember, title: str, text_ja: str) -> int:
        title, text_ja = self._check_canned(title, text_ja)
        with self.sessions() as session:
            row = CannedReply(title=title, text_ja=text_ja, created_by=staff.id)
            session.add(row)
            session.flush()
            audit(session, staff.id, "canned_create", ("canned_reply", row.id))
            session.commit()
            return row.id

    def update_canned(self, staff: StaffMember, canned_id: int, title: str, text_ja: str) -> None:
        title, text_ja = self._check_canned(title, text_ja)
        with self.sessions() as session:
            row = session.get(CannedReply, canned_id)
            if row is None:
                raise NotFound(f"定型文 {canned_id} はありません。")
            row.title, row.text_ja, row.updated_at = title, text_ja, utcnow()
            audit(session, staff.id, "canned_update", ("canned_reply", canned_id))
            session.commit()

    def delete_canned(self, staff: StaffMember, canned_id: int) -> None:
        with self.sessions() as session:
            row = session.get(CannedReply, canned_id)
            if row is None:
                raise NotFound(f"定型文 {canned_id} はありません。")
            session.delete(row)
            audit(session, staff.id, "canned_delete", ("canned_reply", canned_id))
            session.commit()

    # ------------------------------------------------------------------ knowledge-base proposals

    def propose_entry(self, escalation_id: int | None, staff: StaffMember, question_ja: str, answer_ja: str) -> int:
        """Propose a staff answer as a knowledge-base entry (status ``proposed``)."""
        question_ja, answer_ja = question_ja.strip(), answer_ja.strip()
        if not question_ja or not answer_ja:
            raise HelpDeskError("質問と回答を入力してください。")
        with self.sessions() as session:
            if escalation_id is not None and session.get(Escalation, escalation_id) is None:
                raise NotFound(f"相談 {escalation_id} はありません。")
            row = KbSuggestion(escalation_id=escalation_id, question_ja=question_ja, answer_ja=answer_ja,
                               proposed_by=staff.id, status="proposed")
            session.add(row)
            session.flush()
            audit(session, staff.id, "kb_propose", ("kb_suggestion", row.id), {"escalation": escalation_id})
            session.commit()
            return row.id

    def suggestions(self, status: str | None = "proposed") -> list[SuggestionView]:
        proposer, decider = aliased(StaffUser), aliased(StaffUser)
        query = (
            select(KbSuggestion, proposer.display_name, decider.display_name)
            .outerjoin(proposer, proposer.id == KbSuggestion.proposed_by)
            .outerjoin(decider, decider.id == KbSuggestion.decided_by)
            .order_by(KbSuggestion.id.desc())
        )
        if status:
            query = query.where(KbSuggestion.status == status)
        with self.sessions() as session:
            return [
                SuggestionView(row.id, row.escalation_id, row.question_ja, row.answer_ja, row.status, by, decided,
                               row.draft_path, _aware(row.created_at))
                for row, by, decided in session.execute(query)
            ]

    def _pending_suggestion(self, session: Session, suggestion_id: int, admin: StaffMember) -> KbSuggestion:
        if not admin.is_admin:
            raise Forbidden("この操作は管理者だけができます。")
        row = session.get(KbSuggestion, suggestion_id)
        if row is None:
            raise NotFound(f"提案 {suggestion_id} はありません。")
        if row.status != "proposed":
            raise HelpDeskError(f"提案 {suggestion_id} は処理済みです。")
        return row

    async def accept_suggestion(self, suggestion_id: int, admin: StaffMember) -> Path:
        """Admin only: write a draft entry (Japanese + machine translations, marked) under ``drafts_dir``.

        The draft is not a reviewed entry: ``kb-check`` and training read ``entries/`` only. Content
        staff complete it (easy Japanese, sources, training questions, reviewed translations) and
        move it to ``entries/<topic>/``.
        """
        with self.sessions() as session:
            row = self._pending_suggestion(session, suggestion_id, admin)
            question, answer = row.question_ja, row.answer_ja
            escalation = session.get(Escalation, row.escalation_id) if row.escalation_id else None
            topic = escalation.topic if escalation is not None and escalation.topic in KB_TOPICS else None
            category = escalation.category if escalation is not None else None
        translations: dict[str, dict[str, str]] = {}
        for language in LANGUAGES:
            if language in JAPANESE or self.translator is None or not self.translator.can_translate("ja", language):
                continue
            q = await self.translator.translate(question, "ja", language)
            a = await self.translator.translate(answer, "ja", language)
            if q is not None and a is not None:
                translations[language] = {"question": q.text, "answer": a.text, "via": _via(a)}
        path = self._write_draft(suggestion_id, question, answer, translations, topic, category)
        with self.sessions() as session:
            row = self._pending_suggestion(session, suggestion_id, admin)
            row.status = "accepted"
            row.translations = translations
            row.draft_path = str(path)
            row.decided_by = admin.id
            row.decided_at = utcnow()
            audit(session, admin.id, "kb_accept", ("kb_suggestion", suggestion_id),
                  {"draft": path.name, "machine_translated": sorted(translations)})
            session.commit()
        log.info("kb suggestion=%s accepted into %s", suggestion_id, path)
        return path

    def _write_draft(
        self,
        suggestion_id: int,
        question: str,
        answer: str,
        translations: dict[str, dict[str, str]],
        topic: str | None,
        category: str | None,
    ) -> Path:
        entry_id = f"staff_suggestion_{suggestion_id}"
        missing = [lang for lang in LANGUAGES if lang != "ja" and lang not in translations]

        def block(text: str, indent: str) -> str:
            return "|\n" + "\n".join(indent + line if line else "" for line in text.splitlines()) + "\n"

        lines = [
            f"# DRAFT from a help-desk answer (suggestion {suggestion_id}), accepted {utcnow().date()}.",
            "# Not a reviewed entry: kb-check and training read entries/ only. To publish it: review every",
            "# language (the ones marked 'machine translation' were made by argos and are unreviewed), write",
            "# the easy Japanese, add sources and at least 8 training questions per language, remove the",
            "# 'draft:' block, and move the file to entries/<topic>/.",
            f"id: {entry_id}",
            f"topic: {topic or 'daily_life'}  # check",
            f"category: {category or 'daily_life'}  # check",
            "terms_ja: []",
            "urgent: false",
            "related: []",
            f"last_checked: {utcnow().date().isoformat()}",
            "sources: []",
            "draft:",
            f"  suggestion: {suggestion_id}",
            f"  machine_translated: [{', '.join(sorted(translations))}]",
            f"  missing: [{', '.join(missing)}]",
            "answers:",
            "  ja: " + block(answer, "    ").rstrip("\n"),
        ]
        for language, item in translations.items():
            lines.append(f"  # {language}: machine translation ({item['via']}), to review")
            lines.append(f"  {language}: " + block(item["answer"], "    ").rstrip("\n"))
        lines.append("questions:")
        lines.append("  ja:")
        lines.append("    - " + json.dumps(question, ensure_ascii=False))
        for language, item in translations.items():
            lines.append(f"  {language}:  # machine translation, to review")
            lines.append("    - " + json.dumps(item["question"], ensure_ascii=False))
        text = "\n".join(lines) + "\n"
        yaml.safe_load(text)  # the draft must at least be valid YAML
        self.drafts_dir.mkdir(parents=True, exist_ok=True)
        path = self.drafts_dir / f"{entry_id}.yml"
        path.write_text(text, encoding="utf-8")
        return path

    def reject_suggestion(self, suggestion_id: int, admin: StaffMember) -> None:
        with self.sessions() as session:
            row = self._pending_suggestion(session, suggestion_id, admin)
            row.status = "rejected"
            row.decided_by = admin.id
            row.decided_at = utcnow()
            audit(session, admin.id, "kb_reject", ("kb_suggestion", suggestion_id))
            session.commit()

    # ------------------------------------------------------------------ audit

    def audit_log(self, page: int = 1, per_page: int = 100) -> list[AuditView]:
        page, per_page = max(1, page), min(max(1, per_page), 500)
        with self.sessions() as session:
            rows = session.execute(
                select(AuditEntry, StaffUser.display_name)
                .outerjoin(StaffUser, StaffUser.id == AuditEntry.staff_id)
                .order_by(AuditEntry.id.desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
        return [
            AuditView(row.id, name, row.action, row.target_type, row.target_id, row.detail, _aware(row.at))
            for row, name in rows
        ]

    def record(self, staff: StaffMember | None, action: str, target: tuple[str, object] | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Audit an action done outside this service (login, logout, token use) in its own transaction."""
        with self.sessions() as session:
            audit(session, staff.id if staff else None, action, target, detail)
            session.commit()

    # ------------------------------------------------------------------ background

    async def translate_pending(self, limit: int = 20) -> int:
        """Translate waiting user messages into Japanese for staff; returns how many were done.

        Run by the app's background loop, never on a webhook's path. No database transaction stays
        open while a model translates.
        """
        with self.sessions() as session:
            pending = session.execute(
                select(Message.id, Message.text, Message.language, Message.conversation_id)
                .where(Message.translation_status == "pending")
                .order_by(Message.id)
                .limit(limit)
            ).all()
        if not pending:
            return 0
        done = 0
        conversations: set[int] = set()
        for message_id, text, language, conversation_id in pending:
            language = language or "en"
            values: dict[str, Any]
            if language in JAPANESE:
                values = {"text_ja": text, "translated_by": "original", "translation_status": "done"}
            elif self.translator is not None and self.translator.can_translate(language, "ja"):
                try:
                    translation = await self.translator.translate(text, language, "ja")
                except Exception:  # one bad message must not stop the others
                    log.exception("translation failed message=%s", message_id)
                    translation = None
                values = (
                    {"text_ja": translation.text, "translated_by": _via(translation), "translation_status": "done"}
                    if translation is not None
                    else {"translation_status": "unavailable"}
                )
            else:
                values = {"translation_status": "unavailable"}
            with self.sessions() as session:
                session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.translation_status == "pending")
                    .values(**values)
                )
                session.commit()
            conversations.add(conversation_id)
            done += values["translation_status"] == "done"
        self._summarise(conversations)
        return done

    def _summarise(self, conversation_ids: set[int]) -> None:
        """Refresh the Japanese summary of the open cases of these conversations (one query each way)."""
        if not conversation_ids:
            return
        with self.sessions() as session:
            cases = session.scalars(
                select(Escalation).where(
                    Escalation.conversation_id.in_(conversation_ids), Escalation.status.in_(OPEN_CASE)
                )
            ).all()
            if not cases:
                return
            rows = session.execute(
                select(Message.conversation_id, Message.id, Message.text_ja)
                .where(
                    Message.conversation_id.in_([c.conversation_id for c in cases]),
                    Message.direction == "in",
                    Message.text_ja.is_not(None),
                )
                .order_by(Message.id)
            ).all()
            for escalation in cases:
                first = escalation.first_message_id or 0
                texts = [
                    str(text) for conversation_id, message_id, text in rows
                    if conversation_id == escalation.conversation_id and message_id >= first
                ]
                if texts:
                    escalation.summary_ja = _short(" / ".join(texts[:3]))
            session.commit()
