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
    message_id: int | None = None
    """The stored outbound message, when delivered by the core (connectors may refer to it)."""


KINDS = ("text", "welcome", "unsupported", "unsubscribe", "help", "language_menu", "area_menu", "staff",
         "delete_data")
"""What an inbound event means, whatever the platform calls it.

``text``: words (or a button's payload); ``welcome``: the user arrived (LINE follow, Telegram /start);
``unsupported``: a sticker, image, audio, video, file or location; ``unsubscribe``: the user left
(LINE unfollow); the rest are explicit commands (Telegram /help, /language, /area, /staff, /delete_my_data).
``area_menu``: "which municipality do you live in?"; its text may carry the answer ("/area 一関市").
"""


@dataclass(frozen=True)
class Inbound:
    """One normalised message from a platform."""

    platform: str
    platform_user_id: str
    text: str
    event_id: str | None = None
    language_hint: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    kind: str = "text"
    """One of :data:`KINDS`."""
    reply_context: dict[str, str] = field(default_factory=dict)
    """Stored with the message and handed to ``deliver`` once (e.g. a LINE reply token)."""


class DeliveryError(Exception):
    """A connector could not deliver now; the core keeps the replies and retries.

    ``delivered``: how many of the replies did reach the user before the failure (not sent again);
    ``retry_after``: seconds the platform asked us to wait; ``permanent``: retrying cannot help;
    ``unsubscribed``: the user blocked the bot or left (permanent; the identity is marked unsubscribed);
    ``uncertain``: reply number ``delivered`` may have arrived (the request timed out after it was
    sent, and the platform has no retry key): it is not sent blindly again.
    """

    def __init__(
        self,
        reason: str,
        *,
        delivered: int = 0,
        retry_after: float | None = None,
        permanent: bool = False,
        unsubscribed: bool = False,
        uncertain: bool = False,
    ) -> None:
        super().__init__(reason)
        self.delivered = delivered
        self.retry_after = retry_after
        self.permanent = permanent or unsubscribed
        self.unsubscribed = unsubscribed
        self.uncertain = uncertain


class Connector(Protocol):
    """What the core needs from a platform."""

    platform: str

    async def deliver(self, address: str, replies: Sequence[Reply], reply_context: dict[str, str]) -> None:
        """Send ``replies`` to the platform user ``address``; raise DeliveryError to retry.

        ``reply_context`` is what the connector stored with the inbound event, given on the first
        attempt only (empty afterwards).
        """
        ...

    async def thinking(self, address: str) -> None:
        """Show that the assistant is working (LINE loading animation, Telegram typing); best effort."""
        ...

    async def profile_language(self, address: str) -> str | None:
        """The language the platform knows for this user (LINE profile), or None."""
        ...

    async def language_changed(self, address: str, language: str) -> None:
        """The user is now answered in ``language`` (chosen, or first known): e.g. switch their LINE
        rich menu. Best effort: called after the answer, with a time limit; failures are only logged."""
        ...
