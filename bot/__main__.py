"""Command line: ``python -m bot <command>``.

run        train if needed, start Rasa and the app; Ctrl-C stops both
serve      start the app only (Rasa elsewhere: CONSULT_RASA_URL)
engine     start Rasa only
train      train the Rasa model if its inputs changed (--force to always)
kb-check   validate the knowledge base, the catalog and the training data
db-upgrade bring the database to the newest schema
chat       talk to a running app in the terminal
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
    for problem in problems:
        print(problem)
    topics: dict[str, int] = {}
    for entry in kb.entries.values():
        topics[entry.topic] = topics.get(entry.topic, 0) + 1
    print(f"{len(kb.entries)} entries {dict(sorted(topics.items()))}; {len(problems)} problems")
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


def main(argv: list[str] | None = None) -> int:
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
    if args.command == "chat":
        return _chat(args.url or f"http://{settings.host}:{settings.port}", args.sender)
    return 2


if __name__ == "__main__":
    sys.exit(main())
