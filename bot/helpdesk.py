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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.pipeline import Assistant
from bot.staff import StaffMember

QUEUE_PAGE_SIZE = 50
SUMMARY_CHARS = 80


class TranslationLike(Protocol):
    text: str
    via: str


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


class HelpDesk:
    """The staff-side service over the pipeline's storage and connectors."""

    def __init__(self, assistant: Assistant, translator: TranslatorLike | None, drafts_dir: Path) -> None:
        self.assistant = assistant
        self.translator = translator
        self.drafts_dir = drafts_dir

    # queue and case
    def queue(self, filters: QueueFilter = QueueFilter(), page: int = 1, per_page: int = QUEUE_PAGE_SIZE) -> QueuePage:
        """One page of the queue: urgent first, then night cases, then oldest; two queries in all."""
        raise NotImplementedError

    def topics(self) -> list[str]:
        """Topics present among unresolved cases (for the filter's choices)."""
        raise NotImplementedError

    def case(self, escalation_id: int) -> CaseView:
        """The case page's content; raises :class:`NotFound`."""
        raise NotImplementedError

    # staff actions (each audited)
    def take_over(self, conversation_id: int, staff: StaffMember) -> int:
        """Staff take a conversation: its open case (or a new one, reason ``staff``), assigned to them."""
        raise NotImplementedError

    def assign(self, escalation_id: int, staff: StaffMember, assignee_id: int | None = None) -> None:
        """Assign a case (to ``staff`` themselves by default); the conversation goes to staff."""
        raise NotImplementedError

    async def preview(self, escalation_id: int, text_ja: str) -> Preview:
        """The translation of a Japanese reply into the user's language, or a notice when there is none."""
        raise NotImplementedError

    async def reply(
        self, escalation_id: int, staff: StaffMember, text_ja: str, edited_translation: str | None = None
    ) -> ReplyResult:
        """Send a staff reply: translated + machine note + Japanese original (or Japanese + easy note).

        The case becomes ``waiting`` (for the user); the conversation stays with staff.
        """
        raise NotImplementedError

    async def hand_back(self, escalation_id: int, staff: StaffMember) -> None:
        """Resolve the case and give the conversation back to the assistant; the user is told."""
        raise NotImplementedError

    async def resolve(self, escalation_id: int, staff: StaffMember) -> None:
        """Close the case; if staff held the conversation it goes back to the assistant (user told)."""
        raise NotImplementedError

    # canned replies
    def canned_replies(self) -> list[CannedReplyView]:
        raise NotImplementedError

    def create_canned(self, staff: StaffMember, title: str, text_ja: str) -> int:
        raise NotImplementedError

    def update_canned(self, staff: StaffMember, canned_id: int, title: str, text_ja: str) -> None:
        raise NotImplementedError

    def delete_canned(self, staff: StaffMember, canned_id: int) -> None:
        raise NotImplementedError

    # knowledge-base proposals
    def propose_entry(self, escalation_id: int | None, staff: StaffMember, question_ja: str, answer_ja: str) -> int:
        """Propose a staff answer as a knowledge-base entry (status ``proposed``)."""
        raise NotImplementedError

    def suggestions(self, status: str | None = "proposed") -> list[SuggestionView]:
        raise NotImplementedError

    async def accept_suggestion(self, suggestion_id: int, admin: StaffMember) -> Path:
        """Admin only: write a draft entry (Japanese + machine translations, marked) under ``drafts_dir``."""
        raise NotImplementedError

    def reject_suggestion(self, suggestion_id: int, admin: StaffMember) -> None:
        raise NotImplementedError

    # audit
    def audit_log(self, page: int = 1, per_page: int = 100) -> list[AuditView]:
        raise NotImplementedError

    def record(self, staff: StaffMember | None, action: str, target: tuple[str, object] | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Audit an action done outside this service (login, logout, token use) in its own transaction."""
        raise NotImplementedError

    # background
    async def translate_pending(self, limit: int = 20) -> int:
        """Translate waiting user messages into Japanese for staff; returns how many were done."""
        raise NotImplementedError

    def language_choices(self) -> Sequence[tuple[str, str]]:
        """``(code, label)`` for the language filter."""
        raise NotImplementedError
