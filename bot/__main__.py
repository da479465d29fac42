"""Command line: ``python -m bot <command>``.

run        train if needed, start Rasa and the app; Ctrl-C stops both
serve      start the app only (Rasa elsewhere: CONSULT_RASA_URL)
engine     start Rasa only
train      train the Rasa model if its inputs changed (--force to always)
kb-check   validate the knowledge base, the catalog and the training data
db-upgrade bring the database to the newest schema
chat       talk to a running app in the terminal
create-admin  create a staff account (admin by default): --login NAME [--staff] [--password-stdin]
create-token  print a new API token for a staff account: --login NAME [--label TEXT]
translation   offline translation packages: install FILE.argosmodel... | list
alert      send a disaster alert, follow it, run an alert worker (``alert --help``)
disaster-mode on|off|status
privacy    export / delete one user's data (--platform P --user ID), purge old messages
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bot.settings import PROJECT, Settings

log = logging.getLogger("bot")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _die_with_parent() -> None:
    """Linux: the engine gets SIGTERM if the app process dies, so no orphan keeps the port."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


SCALE_DEFAULTS = {
    "CONSULT_TRACKER_STORE_URL": "postgresql://postgres@127.0.0.1:5432/rasa",
    "CONSULT_REDIS_HOST": "127.0.0.1",
    "CONSULT_REDIS_PORT": "6379",
    "CONSULT_REDIS_DB": "0",
    "CONSULT_REDIS_PASSWORD": "",
    "CONSULT_LOCK_PREFIX": "consult",
    "SQL_POOL_SIZE": "5",
    "SQL_MAX_OVERFLOW": "10",
    "TICKET_LOCK_LIFETIME": "8",
}
"""What ``endpoints-scale.yml`` reads from the environment, when the environment does not say."""


def start_engine(
    settings: Settings, port: int, log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``rasa run`` on the trained model with ``settings.engine_endpoints``; ``env`` adds variables."""
    from bot.engine_build import engine_env, model_path, rasa_executable

    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(rasa_executable(PROJECT)), "run",
        "--model", str(model_path(PROJECT)),
        "--credentials", str(PROJECT / "credentials.yml"),
        "--endpoints", str(settings.engine_endpoints),
        "--interface", settings.engine_host, "--port", str(port),
    ]
    environment = {**SCALE_DEFAULTS, **engine_env(PROJECT), **(env or {})}
    with log_file.open("ab") as out:
        return subprocess.Popen(
            command, cwd=PROJECT, env=environment, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _train(force: bool = False) -> None:
    from bot.engine_build import train_if_needed
    from bot.knowledge import KnowledgeBase

    settings = Settings()
    trained = train_if_needed(KnowledgeBase.load(settings.knowledge_base), PROJECT, force=force)
    print("model trained" if trained else "model up to date")


def _kb_check() -> int:
    from bot.knowledge import KnowledgeBase, KnowledgeBaseError, check

    settings = Settings()
    try:
        kb = KnowledgeBase.load(settings.knowledge_base)
    except KnowledgeBaseError as exc:
        print("\n".join(exc.problems))
        return 1
    problems = check(kb)
    from bot.alerts import check_alerts, load_alerts

    problems += check_alerts(load_alerts(kb.root), kb)
    from bot.areas import check_areas

    problems += check_areas(kb)
    for problem in problems:
        print(problem)
    topics: dict[str, int] = {}
    for entry in kb.entries.values():
        topics[entry.topic] = topics.get(entry.topic, 0) + 1
    print(f"{len(kb.entries)} entries {dict(sorted(topics.items()))}; {len(kb.region.municipalities)} municipalities; "
          f"{len(problems)} problems")
    return 1 if problems else 0


def _serve(settings: Settings) -> None:
    import uvicorn

    from bot.web.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)


def _run() -> int:
    import uvicorn

    from bot.web.app import create_app

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _train()
    port = int(settings.rasa_urls()[0].rsplit(":", 1)[1].split("/")[0])
    engine = start_engine(settings, port, settings.data_dir / "logs" / "rasa.log")
    try:
        app = create_app(settings)
        base = f"http://{settings.host}:{settings.port}"
        print(
            f"\n  web chat:  {base}/\n  REST:      POST {base}/webhooks/rest/webhook\n"
            f"  health:    {base}/health\n  database:  {settings.resolved_database_url()}\n"
            f"  engine log: {settings.data_dir / 'logs' / 'rasa.log'} (the engine takes about 20 s to load)\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
        )
        asyncio.run(server.serve())
    finally:
        stop_process(engine)
        print("stopped", flush=True)
    return 0


def _engine_only() -> int:
    settings = Settings()
    _train()
    port = int(settings.rasa_urls()[0].rsplit(":", 1)[1].split("/")[0])
    process = start_engine(settings, port, settings.data_dir / "logs" / "rasa.log")
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process(process)


def _chat(url: str, sender: str) -> int:
    import httpx

    seen: set[int] = set()
    last = 0

    def show(items: list[dict[str, object]]) -> list[dict[str, str]]:
        nonlocal last
        buttons: list[dict[str, str]] = []
        for item in items:
            message_id = item.get("message_id")
            if isinstance(message_id, int):
                if message_id in seen:
                    continue
                seen.add(message_id)
                last = max(last, message_id)
            print(f"\nbot> {item.get('text', '')}")
            for button in item.get("buttons") or []:  # type: ignore[attr-defined]
                buttons.append(button)
                print(f"   [{len(buttons)}] {button['title']}")
        return buttons

    print("Type a question (numbers choose a button, Ctrl-D quits).")
    buttons: list[dict[str, str]] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                late = client.get("/webhooks/rest/messages", params={"sender": sender, "after": last}).json()
                buttons = show(late) or buttons
            try:
                text = input("\nyou> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if text.strip().isdigit() and 0 < int(text) <= len(buttons):
                text = buttons[int(text) - 1]["payload"]
            body = {"sender": sender, "message": text, "message_id": f"cli-{time.time_ns()}"}
            try:
                answer = client.post("/webhooks/rest/webhook", content=json.dumps(body),
                                     headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                print(f"(cannot reach {url}: {type(exc).__name__})")
                continue
            data = answer.json()
            buttons = show(data) if isinstance(data, list) else show([{"text": data.get("error", "")}])


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat: ") != password:
        raise SystemExit("the passwords differ")
    return password


def _create_admin(settings: Settings, login: str, display_name: str, role: str, from_stdin: bool) -> int:
    from bot.db import make_engine, sessions, upgrade
    from bot.staff import StaffError, audit, create_staff

    url = settings.resolved_database_url()
    upgrade(url)
    password = _read_password(from_stdin)
    engine = make_engine(url)
    try:
        with sessions(engine)() as session:
            try:
                staff = create_staff(session, login, password, display_name=display_name, role=role)
            except StaffError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            audit(session, None, "staff_create", ("staff", staff.id), {"role": role, "by": "command line"})
            session.commit()
    finally:
        engine.dispose()
    print(f"created {role} {staff.login!r} (id {staff.id})")
    return 0


def _create_token(settings: Settings, login: str, label: str) -> int:
    from sqlalchemy import select

    from bot.db import make_engine, sessions, upgrade
    from bot.db.models import StaffUser
    from bot.staff import audit, create_token

    url = settings.resolved_database_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        with sessions(engine)() as session:
            staff_id = session.scalar(select(StaffUser.id).where(StaffUser.login == login, StaffUser.active))
            if staff_id is None:
                print(f"error: no active staff account {login!r}", file=sys.stderr)
                return 1
            token = create_token(session, staff_id, label)
            audit(session, staff_id, "token_create", ("staff", staff_id), {"label": label, "by": "command line"})
            session.commit()
    finally:
        engine.dispose()
    print(token)  # shown once; only its hash is stored
    return 0


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["translation"]:
        from bot.translation_cli import main as translation_main
        return translation_main((sys.argv[1:] if argv is None else argv)[1:])
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    sub.add_parser("serve")
    sub.add_parser("engine")
    train = sub.add_parser("train")
    train.add_argument("--force", action="store_true")
    sub.add_parser("kb-check")
    sub.add_parser("db-upgrade")
    chat = sub.add_parser("chat")
    chat.add_argument("--url", default=None)
    chat.add_argument("--sender", default=f"cli-{os.getpid()}-{int(time.time())}")
    admin = sub.add_parser("create-admin", help="create a staff account (no default password exists)")
    admin.add_argument("--login", required=True)
    admin.add_argument("--name", default="", help="display name (default: the login)")
    admin.add_argument("--staff", action="store_true", help="role staff instead of admin")
    admin.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    token = sub.add_parser("create-token", help="print a new API token for a staff account")
    token.add_argument("--login", required=True)
    token.add_argument("--label", default="")
    from bot import alert_cli

    alert_cli.add_parsers(sub)
    privacy = sub.add_parser("privacy")
    privacy.add_argument("action", choices=("export", "delete", "purge"))
    privacy.add_argument("--platform", default="")
    privacy.add_argument("--user", default="")
    privacy.add_argument("--days", type=int, default=None, help="purge: default CONSULT_RETENTION_DAYS")
    args = parser.parse_args(argv)
    settings = Settings()
    _configure_logging(settings.log_level)
    if args.command == "run":
        return _run()
    if args.command == "serve":
        _serve(settings)
        return 0
    if args.command == "engine":
        return _engine_only()
    if args.command == "train":
        _train(force=args.force)
        return 0
    if args.command == "kb-check":
        return _kb_check()
    if args.command == "db-upgrade":
        from bot.db import upgrade

        upgrade(settings.resolved_database_url())
        return 0
    if args.command == "create-admin":
        return _create_admin(settings, args.login, args.name, "staff" if args.staff else "admin", args.password_stdin)
    if args.command == "create-token":
        return _create_token(settings, args.login, args.label)
    if args.command == "privacy":
        from bot.privacy import command

        if args.action != "purge" and not (args.platform and args.user):
            parser.error("export and delete need --platform and --user")
        days = settings.retention_days if args.days is None else args.days
        return command(args.action, settings.resolved_database_url(), args.platform, args.user, days)
    if args.command == "chat":
        return _chat(args.url or f"http://{settings.host}:{settings.port}", args.sender)
    if args.command in ("alert", "disaster-mode"):
        return alert_cli.run(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
