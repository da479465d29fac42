"""The alert senders of the configured platforms (``bot.broadcast.BroadcastSender``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.broadcast import BroadcastSender
    from bot.settings import Settings


def broadcasters(settings: Settings) -> dict[str, BroadcastSender]:
    """One sender per platform whose secrets are set; each with its own SDK client."""
    found: dict[str, BroadcastSender] = {}
    if settings.line_channel_secret.get_secret_value() and settings.line_channel_access_token.get_secret_value():
        from connectors.line import LineConnector
        from connectors.line.broadcast import LineBroadcaster

        found["line"] = LineBroadcaster(LineConnector(
            settings.line_channel_access_token.get_secret_value(), settings.line_api_url, settings.line_timeout,
            settings.line_reply_token_seconds,
        ))
    if settings.telegram_bot_token.get_secret_value():
        import logging
        import os

        from connectors.telegram import TelegramConnector

        os.environ.setdefault("PTB_TIMEDELTA", "true")  # as TelegramChannel.from_settings
        for name in ("httpx", "httpcore", "telegram"):  # the bot token is part of every Bot API URL
            logging.getLogger(name).setLevel(logging.WARNING)
        from connectors.telegram.broadcast import TelegramBroadcaster

        found["telegram"] = TelegramBroadcaster(
            TelegramConnector(settings.telegram_bot_token.get_secret_value(), settings.telegram_api_url,
                              settings.telegram_timeout),
            rate=settings.telegram_broadcast_rate,
        )
    return found
