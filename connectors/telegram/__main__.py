"""``python -m connectors.telegram set-webhook | set-commands | delete-webhook``.

set-webhook    register ``CONSULT_TELEGRAM_PUBLIC_URL``/webhooks/telegram with the secret token, and the
               command menu in every shipped language
set-commands   only the command menu (/start, /help, /language, /area, /staff, /delete_my_data), per language_code
delete-webhook stop webhook delivery (long polling needs this; the app does it itself when polling)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from telegram import BotCommand

from bot.knowledge import KnowledgeBase
from bot.languages import LANGUAGES
from bot.settings import Settings
from connectors.telegram import ALLOWED_UPDATES, COMMANDS, TelegramConnector

TELEGRAM_LANGUAGE_CODES = {code: code for code in LANGUAGES if code != "ja-easy"}
"""Telegram's language_code (ISO 639-1) for each shipped language; easy Japanese has none."""


def command_menu(kb: KnowledgeBase, language: str) -> list[BotCommand]:
    return [BotCommand(name, kb.message(f"command_{name}", language)) for name in COMMANDS]


async def set_commands(connector: TelegramConnector, kb: KnowledgeBase) -> None:
    bot = await connector.api()
    await bot.set_my_commands(command_menu(kb, "en"))  # users whose language is not shipped
    for language, code in TELEGRAM_LANGUAGE_CODES.items():
        await bot.set_my_commands(command_menu(kb, language), language_code=code)


async def set_webhook(connector: TelegramConnector, settings: Settings, kb: KnowledgeBase) -> str:
    if not settings.telegram_public_url.startswith("https://"):
        raise SystemExit("CONSULT_TELEGRAM_PUBLIC_URL must be the app's public https:// address")
    secret = settings.telegram_secret_token.get_secret_value()
    if not secret:
        raise SystemExit("CONSULT_TELEGRAM_SECRET_TOKEN must be set (1-256 characters A-Z, a-z, 0-9, _ and -)")
    url = settings.telegram_public_url.rstrip("/") + "/webhooks/telegram"
    bot = await connector.api()
    await bot.set_webhook(url, secret_token=secret, allowed_updates=list(ALLOWED_UPDATES))
    await set_commands(connector, kb)
    return url


async def _main(command: str, settings: Settings) -> int:
    if not settings.telegram_bot_token.get_secret_value():
        print("CONSULT_TELEGRAM_BOT_TOKEN is not set", file=sys.stderr)
        return 2
    from connectors.telegram import TelegramChannel

    channel = TelegramChannel.from_settings(settings)
    kb = KnowledgeBase.load(settings.knowledge_base)
    try:
        if command == "set-webhook":
            print(f"webhook set: {await set_webhook(channel.telegram, settings, kb)}")
        elif command == "set-commands":
            await set_commands(channel.telegram, kb)
            print("commands set")
        else:
            bot = await channel.telegram.api()
            await bot.delete_webhook()
            print("webhook deleted")
    finally:
        await channel.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.telegram", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["set-webhook", "set-commands", "delete-webhook"])
    args = parser.parse_args(argv)
    return asyncio.run(_main(args.command, Settings()))


if __name__ == "__main__":
    sys.exit(main())
