"""``python -m bot alert ...`` and ``python -m bot disaster-mode ...``: the staff console's alert
functions from a terminal (the same :class:`bot.broadcast.BroadcastService` calls)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from bot.settings import Settings


def add_parsers(sub: Any) -> None:
    alert = sub.add_parser("alert", help="send a disaster alert and follow it")
    verbs = alert.add_subparsers(dest="verb", required=True)
    send = verbs.add_parser("send", help="queue an alert and deliver it (unless --queue-only)")
    send.add_argument("--template", required=True)
    send.add_argument("--field", action="append", default=[], metavar="NAME=VALUE")
    send.add_argument("--free-text", default="", help="staff note in Japanese (machine-translated when possible)")
    send.add_argument("--area", action="append", default=[])
    send.add_argument("--language", action="append", default=[])
    send.add_argument("--platform", action="append", default=[])
    send.add_argument("--by", default="cli")
    send.add_argument("--queue-only", action="store_true", help="leave delivery to the running app's worker")
    status = verbs.add_parser("status", help="progress and delivery report of an alert")
    status.add_argument("id", type=int)
    verbs.add_parser("templates", help="the templates and their fields")
    verbs.add_parser("quota", help="LINE's monthly message quota")
    verbs.add_parser("worker", help="deliver queued alerts until Ctrl-C")
    checkin = verbs.add_parser("checkin", help="safety check-in answers by area")
    checkin.add_argument("id", type=int)
    mode = sub.add_parser("disaster-mode", help="disaster mode on, off or status")
    mode.add_argument("state", choices=("on", "off", "status"))


def _fields(pairs: Sequence[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--field takes NAME=VALUE, not {pair!r}")
        fields[name.strip()] = value
    return fields


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


async def _alert(settings: Settings, args: argparse.Namespace) -> int:
    from bot.alerts import load_alerts
    from bot.broadcast import AlertError, BroadcastService, BroadcastWorker
    from bot.checkin import checkin_counts
    from bot.db import make_engine, sessions, upgrade
    from bot.knowledge import KnowledgeBase
    from connectors.broadcast import broadcasters

    url = settings.resolved_database_url()
    upgrade(url)
    kb = KnowledgeBase.load(settings.knowledge_base)
    engine = make_engine(url)
    made = sessions(engine)
    senders = broadcasters(settings)
    service = BroadcastService(kb, made, senders, load_alerts(kb.root), translator=default_translator(settings))
    try:
        if args.verb == "templates":
            _print(service.templates("en"))
        elif args.verb == "quota":
            quota = await service.line_quota()
            _print(None if quota is None else {"limit": quota.limit, "used": quota.used, "remaining": quota.remaining})
        elif args.verb == "status":
            _print(service.report(args.id))
        elif args.verb == "checkin":
            _print(checkin_counts(made, args.id))
        elif args.verb == "worker":
            await BroadcastWorker(kb, made, senders).run()
        elif args.verb == "send":
            broadcast_id = await service.create_alert(
                args.template, _fields(args.field), free_text=args.free_text, areas=args.area,
                languages=args.language, platforms=args.platform, created_by=args.by,
            )
            print(f"alert {broadcast_id} queued")
            if not args.queue_only:
                await BroadcastWorker(kb, made, senders).drain(broadcast_id)
            _print(service.report(broadcast_id))
    except AlertError as exc:
        print(f"refused: {exc}")
        return 1
    finally:
        for sender in senders.values():
            await sender.close()
        engine.dispose()
    return 0


def default_translator(settings: Settings) -> Any:
    """The offline translator (``bot.translation``) over the installed packages."""
    from bot.translation import Translator

    return Translator.from_settings(settings)


def run(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "disaster-mode":
        from bot.broadcast import is_disaster_mode, set_disaster_mode
        from bot.db import make_engine, sessions, upgrade

        url = settings.resolved_database_url()
        upgrade(url)
        engine = make_engine(url)
        try:
            if args.state != "status":
                set_disaster_mode(sessions(engine), args.state == "on", by="cli")
            print(f"disaster mode is {'on' if is_disaster_mode(sessions(engine)) else 'off'}")
        finally:
            engine.dispose()
        return 0
    try:
        return asyncio.run(_alert(settings, args))
    except KeyboardInterrupt:
        return 0
