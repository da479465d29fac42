"""Per-user rate limiting of chat, shared by every app worker (counts live in the database or Redis).

A message is judged by how many messages the same platform user sent in the minute up to and
including it (a sliding window, counted by arrival): up to the limit it is answered; the first one
over the limit gets one polite notice; the rest are stored (status ``limited``) and not answered.
Judging a message twice (a retry) gives the same verdict, whichever worker does it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.db.models import Conversation, Identity, Message

log = logging.getLogger(__name__)

WINDOW = dt.timedelta(seconds=60)
ANSWER, NOTIFY, SILENT = "answer", "notify", "silent"


def verdict_for(count: int, limit: int) -> str:
    if limit <= 0 or count <= limit:
        return ANSWER
    return NOTIFY if count == limit + 1 else SILENT


class RateLimiter(Protocol):
    limit: int

    def judge(self, session: Session, message: Message, identity: Identity) -> str:
        """:data:`ANSWER`, :data:`NOTIFY` or :data:`SILENT` for this stored inbound message."""
        ...


class DatabaseRateLimiter:
    """Counts the user's stored inbound messages: no state outside the database."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def judge(self, session: Session, message: Message, identity: Identity) -> str:
        if self.limit <= 0:
            return ANSWER
        at = _aware(message.created_at)
        count = session.scalar(
            select(func.count(Message.id))
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.identity_id == identity.id,
                Message.direction == "in",
                Message.id <= message.id,
                Message.created_at > at - WINDOW,
            )
        )
        return verdict_for(int(count or 0), self.limit)


class RedisRateLimiter:
    """A sorted set per platform user (message id scored by arrival time), for many workers at scale."""

    def __init__(self, url: str, limit: int, prefix: str = "consult:rate:") -> None:
        self.limit = limit
        self.prefix = prefix
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def judge(self, session: Session, message: Message, identity: Identity) -> str:
        if self.limit <= 0:
            return ANSWER
        key = f"{self.prefix}{identity.platform}:{identity.platform_user_id}"
        at = _aware(message.created_at).timestamp()
        window = WINDOW.total_seconds()
        pipe = self.redis.pipeline()
        pipe.zadd(key, {str(message.id): at}, nx=True)
        pipe.zremrangebyscore(key, "-inf", at - 2 * window)
        pipe.zrangebyscore(key, f"({at - window}", at, withscores=False)
        pipe.expire(key, int(2 * window) + 5)
        try:
            members = pipe.execute()[2]
        except redis.RedisError as exc:  # fail open: an answer matters more than a limit
            log.warning("rate limit not checked, Redis failed: %s", type(exc).__name__)
            return ANSWER
        count = sum(1 for member in members if int(member) <= message.id)
        return verdict_for(count, self.limit)

    def close(self) -> None:
        self.redis.close()


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
