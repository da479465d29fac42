"""The core's types and the one interface every platform connector implements.

The core knows no platform: a connector turns platform events into :class:`Inbound` and
delivers :class:`Reply` objects; every rich element degrades to text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Button:
    """A choice shown as a button (LINE quick reply, Telegram inline key, web button)."""

    title: str
    payload: str


@dataclass(frozen=True)
class Reply:
    """One message to a user, already in their language."""

    text: str
    buttons: tuple[Button, ...] = ()
    key: str = ""
    """What it was rendered from: ``faq:<id>``, ``msg:<catalog key>``, ``staff``."""


@dataclass(frozen=True)
class Inbound:
    """One normalised message from a platform."""

    platform: str
    platform_user_id: str
    text: str
    event_id: str | None = None
    language_hint: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class DeliveryError(Exception):
    """A connector could not deliver now; the core keeps the replies and retries."""


class Connector(Protocol):
    """What the core needs from a platform."""

    platform: str

    async def deliver(self, address: str, replies: Sequence[Reply], reply_context: dict[str, str]) -> None:
        """Send ``replies`` to the platform user ``address``; raise DeliveryError to retry."""
        ...
