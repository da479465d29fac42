"""How fast the LINE and Telegram webhooks answer the platform, however slow NLU is.

Starts the app (``python -m bot serve``, SQLite in a temporary folder) as its own process, with
the fake LINE and Telegram APIs (tests/fakes.py) and a fake engine that takes ``--engine-delay``
seconds per message (slower than Rasa ever is). Then posts ``--events`` signed LINE webhooks and
as many Telegram updates, one after another, each from a new user, and measures the time from
sending the request to the 200. Every answer must still arrive at the fake platform afterwards.
Prints p50/p95/p99/max as Markdown for bench/RESULTS.md.

    .venv/bin/python bench/webhook_ack.py [--events 200] [--engine-delay 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from aiohttp import web

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.fakes import (  # noqa: E402
    FakeLine,
    FakeServer,
    FakeTelegram,
    free_port,
    telegram_message_update,
    text_event,
    webhook_body,
)

QUESTIONS = ("How do I renew my visa?", "Where can I see a doctor at night?", "hello", "Is there a job fair?")
SECRET = "bench-telegram-secret"


class SlowEngine(FakeServer):
    """Rasa's consult channel, answering a greeting after a delay (NLU under load)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def app(self) -> web.Application:
        app = web.Application()

        async def ready(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def answer(_: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            return web.json_response({"messages": [{"custom": {"message": "greet_reply"}}],
                                      "parse": {"intent": {"name": "greet", "confidence": 0.99}}})

        app.router.add_get("/webhooks/consult/", ready)
        app.router.add_post("/webhooks/consult/webhook", answer)
        return app


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} ms | {percentile(ms, 0.95):.1f} ms | "
            f"{percentile(ms, 0.99):.1f} ms | {max(ms):.1f} ms |")


def wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--engine-delay", type=float, default=1.5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, FakeLine() as line, FakeTelegram() as telegram, \
            SlowEngine(args.engine_delay) as engine:
        port = free_port()
        env = {
            **os.environ,
            "CONSULT_DATA_DIR": tmp, "CONSULT_PORT": str(port), "CONSULT_RASA_URL": engine.url,
            "CONSULT_RASA_TIMEOUT": str(args.engine_delay + 30), "CONSULT_LOG_LEVEL": "WARNING",
            "CONSULT_LINE_CHANNEL_SECRET": line.channel_secret,
            "CONSULT_LINE_CHANNEL_ACCESS_TOKEN": line.access_token,
            "CONSULT_LINE_API_URL": line.url, "CONSULT_LINE_DATA_API_URL": line.url,
            "CONSULT_TELEGRAM_BOT_TOKEN": telegram.token, "CONSULT_TELEGRAM_SECRET_TOKEN": SECRET,
            "CONSULT_TELEGRAM_API_URL": telegram.url,
        }
        env.pop("DATABASE_URL", None)
        app = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=PROJECT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                if not wait(lambda: _up(client), 120):
                    print(app.stderr.read().decode()[-2000:] if app.stderr else "", file=sys.stderr)
                    return 1
                line_acks, telegram_acks = [], []
                line_users, telegram_users = [], []
                for i in range(args.events):
                    user = f"U{uuid.uuid4().hex}"
                    body = webhook_body(text_event(user, line.issue_reply_token(user), QUESTIONS[i % len(QUESTIONS)]))
                    started = time.perf_counter()
                    response = client.post("/webhooks/line", content=body, headers={
                        "content-type": "application/json", "x-line-signature": line.sign(body)})
                    line_acks.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    line_users.append(user)

                    chat = 10**9 + i
                    update = json.dumps(telegram_message_update(50_000 + i, chat, QUESTIONS[i % len(QUESTIONS)]))
                    started = time.perf_counter()
                    response = client.post("/webhooks/telegram", content=update, headers={
                        "content-type": "application/json", "x-telegram-bot-api-secret-token": SECRET})
                    telegram_acks.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    telegram_users.append(chat)
                answered = wait(lambda: all(line.delivered(u) for u in line_users)
                                and all(telegram.delivered(c) for c in telegram_users), 120)
        finally:
            app.terminate()
            app.wait(15)
        pushed = sum(1 for c in line.calls_to("/v2/bot/message/push") if c.status == 200)
        print(f"\n{args.events} LINE webhooks and {args.events} Telegram updates, sequential, each a new user; "
              f"fake engine {args.engine_delay:.1f} s per message; SQLite.\n")
        print("| webhook | events | ack p50 | ack p95 | ack p99 | ack max |")
        print("|---|---|---|---|---|---|")
        print(row("LINE `POST /webhooks/line`", line_acks))
        print(row("Telegram `POST /webhooks/telegram`", telegram_acks))
        print(f"\nEvery user answered afterwards: {'yes' if answered else 'NO'} "
              f"(LINE: {args.events - pushed} by reply token, {pushed} by push).")
        return 0 if answered else 1


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
