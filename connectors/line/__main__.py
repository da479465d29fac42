"""``python -m connectors.line rich-menus [--images DIR] [--default LANG]``.

Creates one rich menu per shipped language (help, language, my area, staff, delete my data; labels and
chat-bar text from the message catalog), gives each the alias ``consult-<language>``, makes
``--default`` the menu of users not linked yet, and links every known LINE user to the menu of
their language. Run it again after changing the catalog. A user who changes language later is
linked to the new language's menu at once by the app (``LineConnector.language_changed``).

Images: ``DIR/<language>.png`` (2500x843, under 1 MB) when given; otherwise a plain
five-panel image is generated (the tapped area's label is shown in the chat as the user's message).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import zlib
from pathlib import Path

from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    AsyncMessagingApiBlob,
    Configuration,
    CreateRichMenuAliasRequest,
    PostbackAction,
    RichMenuArea,
    RichMenuBounds,
    RichMenuBulkLinkRequest,
    RichMenuRequest,
    RichMenuSize,
    UpdateRichMenuAliasRequest,
)
from linebot.v3.messaging.exceptions import ApiException
from sqlalchemy import select

from bot.db import make_engine, sessions
from bot.db.models import Identity, User
from bot.knowledge import KnowledgeBase
from bot.languages import DEFAULT_LANGUAGE, LANGUAGES
from bot.settings import Settings
from connectors.line import menu_alias

WIDTH, HEIGHT = 2500, 843
AREAS = (("consult:help", "command_help"), ("consult:language", "command_language"), ("consult:area", "command_area"),
         ("consult:staff", "command_staff"), ("consult:delete_data", "command_delete_my_data"))
PANEL_COLOURS = ((0x2E, 0x7D, 0x32), (0x15, 0x65, 0xC0), (0x6A, 0x1B, 0x9A), (0xEF, 0x6C, 0x00), (0x61, 0x61, 0x61))
BULK_LINK = 500


alias = menu_alias


def plain_image() -> bytes:
    """A PNG of coloured panels, one per area (no fonts needed)."""
    panel = WIDTH // len(PANEL_COLOURS)
    row = b"\x00" + b"".join(
        bytes(PANEL_COLOURS[min(x // panel, len(PANEL_COLOURS) - 1)]) for x in range(WIDTH)
    )
    raw = zlib.compress(row * HEIGHT, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def menu_request(kb: KnowledgeBase, language: str) -> RichMenuRequest:
    width = WIDTH // len(AREAS)
    areas = []
    for index, (data, key) in enumerate(AREAS):
        label = kb.message(key, language)
        areas.append(RichMenuArea(
            bounds=RichMenuBounds(x=index * width, y=0, width=width, height=HEIGHT),
            action=PostbackAction(label=label[:20], data=data, displayText=label),
        ))
    return RichMenuRequest(
        size=RichMenuSize(width=WIDTH, height=HEIGHT), selected=False, name=alias(language)[:300],
        chatBarText=kb.message("menu_chat_bar", language)[:14], areas=areas,
    )


def users_by_language(settings: Settings) -> dict[str, list[str]]:
    """LINE user ids by the language they are answered in (choice, else detected, else hint)."""
    found: dict[str, list[str]] = {}
    engine = make_engine(settings.resolved_database_url())
    try:
        with sessions(engine)() as session:
            rows = session.execute(
                select(Identity.platform_user_id, User.language, User.detected_language, Identity.language_hint)
                .join(User, User.id == Identity.user_id)
                .where(Identity.platform == "line", Identity.unsubscribed.is_(False))
            ).all()
    finally:
        engine.dispose()
    for user_id, chosen, detected, hint in rows:
        language = next((lang for lang in (chosen, detected, hint) if lang in LANGUAGES), DEFAULT_LANGUAGE)
        if user_id.startswith("U"):  # users, not groups or rooms
            found.setdefault(language, []).append(user_id)
    return found


async def create_rich_menus(settings: Settings, images: Path | None = None,
                            default: str = DEFAULT_LANGUAGE) -> dict[str, str]:
    """Create the menus, aliases and links; returns the rich menu id of each language."""
    kb = KnowledgeBase.load(settings.knowledge_base)
    token = settings.line_channel_access_token.get_secret_value()
    menus: dict[str, str] = {}
    async with AsyncApiClient(Configuration(host=settings.line_api_url, access_token=token)) as client, \
            AsyncApiClient(Configuration(host=settings.line_data_api_url, access_token=token)) as data_client:
        api, blob = AsyncMessagingApi(client), AsyncMessagingApiBlob(data_client)
        for language in LANGUAGES:
            created = await api.create_rich_menu(menu_request(kb, language))
            menu_id = str(created.rich_menu_id)
            path = images / f"{language}.png" if images else None
            image = path.read_bytes() if path and path.exists() else plain_image()
            await blob.set_rich_menu_image(menu_id, image, _headers={"Content-Type": "image/png"})
            try:
                await api.create_rich_menu_alias(CreateRichMenuAliasRequest(
                    richMenuAliasId=alias(language), richMenuId=menu_id))
            except ApiException as exc:
                if exc.status != 400:  # 400: the alias exists; point it at the new menu
                    raise
                await api.update_rich_menu_alias(alias(language), UpdateRichMenuAliasRequest(richMenuId=menu_id))
            menus[language] = menu_id
        await api.set_default_rich_menu(menus[default])
        for language, user_ids in users_by_language(settings).items():
            for start in range(0, len(user_ids), BULK_LINK):
                await api.link_rich_menu_id_to_users(RichMenuBulkLinkRequest(
                    richMenuId=menus[language], userIds=user_ids[start : start + BULK_LINK]))
    return menus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.line", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    menus = sub.add_parser("rich-menus")
    menus.add_argument("--images", type=Path, default=None)
    menus.add_argument("--default", default=DEFAULT_LANGUAGE, choices=LANGUAGES)
    args = parser.parse_args(argv)
    settings = Settings()
    if not settings.line_channel_access_token.get_secret_value():
        print("CONSULT_LINE_CHANNEL_ACCESS_TOKEN is not set", file=sys.stderr)
        return 2
    created = asyncio.run(create_rich_menus(settings, args.images, args.default))
    for language, menu_id in created.items():
        print(f"{language}: {menu_id} (alias {alias(language)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
