"""Safety check-in answers: "I am safe / I need help" buttons of a check-in alert.

The buttons' payload is ``/checkin:<alert id>:safe|help``. The pipeline hands such a message here
before anything else (no engine, no language detection on the payload). The latest answer per
user and alert counts; "I need help" opens one urgent escalation (reason ``checkin``).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.broadcast import CHECKIN_PREFIX
from bot.db.models import Broadcast, CheckinAnswer, Conversation, Identity, Message, User, utcnow
from bot.ports import Reply

if TYPE_CHECKING:
    from bot.pipeline import Assistant

log = logging.getLogger(__name__)

_PAYLOAD = re.compile(r"^/checkin:(\d{1,12}):(safe|help)$")
ANSWERS = ("safe", "help")


def is_checkin(text: str) -> bool:
    return text.startswith(CHECKIN_PREFIX)


def record_checkin(
    assistant: Assistant,
    session: Session,
    message: Message,
    conversation: Conversation,
    user: User,
    identity: Identity,
    language: str,
) -> list[Reply]:
    """Store the answer and say what happens next, in the user's language."""
    match = _PAYLOAD.match((message.text or "").strip())
    broadcast = session.get(Broadcast, int(match.group(1))) if match else None
    if match is None or broadcast is None:
        return [assistant.reply("help", language)]
    answer = match.group(2)
    message.intent = f"checkin_{answer}"
    row = session.scalar(
        select(CheckinAnswer).where(CheckinAnswer.broadcast_id == broadcast.id, CheckinAnswer.user_id == user.id)
    )
    if row is None:
        row = CheckinAnswer(broadcast_id=broadcast.id, user_id=user.id, answer=answer, area=user.area)
        session.add(row)
    row.answer = answer
    row.area = user.area
    row.updated_at = utcnow()
    if answer == "help":
        if row.escalation_id is None:
            escalation = assistant.escalate(session, conversation, user, identity, "checkin", urgent=True,
                                             language=language)
            row.escalation_id = escalation.id
        log.warning("check-in: help needed alert=%s user=%s escalation=%s", broadcast.id, user.id,
                    row.escalation_id)
        return [assistant.reply("checkin_recorded_help", language)]
    log.info("check-in: safe alert=%s user=%s", broadcast.id, user.id)
    return [assistant.reply("checkin_recorded_safe", language)]


def checkin_counts(sessions: sessionmaker[Session], broadcast_id: int) -> dict[str, Any]:
    """The dashboard: answers by area (``"-"`` when the user gave none), and who has not answered."""
    with sessions() as session:
        rows = session.execute(
            select(CheckinAnswer.area, CheckinAnswer.answer, func.count())
            .where(CheckinAnswer.broadcast_id == broadcast_id)
            .group_by(CheckinAnswer.area, CheckinAnswer.answer)
        ).all()
        from bot.db.models import BroadcastDelivery

        reached = session.scalar(
            select(func.coalesce(func.sum(BroadcastDelivery.recipients), 0))
            .where(BroadcastDelivery.broadcast_id == broadcast_id, BroadcastDelivery.status == "sent")
        )
    areas: dict[str, dict[str, int]] = {}
    totals = {answer: 0 for answer in ANSWERS}
    for area, answer, count in rows:
        cell = areas.setdefault(area or "-", {a: 0 for a in ANSWERS})
        cell[answer] = int(count)
        totals[answer] += int(count)
    answered = sum(totals.values())
    return {"id": broadcast_id, "areas": areas, "totals": totals, "reached": int(reached or 0),
            "not_answered": max(int(reached or 0) - answered, 0)}
