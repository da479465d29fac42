"""Platform connectors: one package per platform. They import the core; the core never imports them.

``bot/web/app.py`` (the composition root) calls :func:`channels` to learn which platforms are
configured; nothing else in ``bot`` names a connector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings
    from bot.web.app import Channel


def channels(settings: Settings) -> list[Channel]:
    """The platforms whose secrets are set in ``settings``."""
    found: list[Channel] = []
    if settings.line_channel_secret.get_secret_value() and settings.line_channel_access_token.get_secret_value():
        from connectors.line import LineChannel

        found.append(LineChannel.from_settings(settings))
    if settings.telegram_bot_token.get_secret_value():
        from connectors.telegram import TelegramChannel

        found.append(TelegramChannel.from_settings(settings))
    return found
