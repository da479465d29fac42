"""A disaster alert to 10,000 subscribers, half on LINE and half on Telegram.

The fake LINE and Telegram APIs (tests/fakes.py, real HTTP on 127.0.0.1; the real SDKs talk to
them) answer ``--failures`` (default 5%) of the send calls with 429 (Retry-After: 1) or 500, at
random (seeded). One alert worker (:class:`bot.broadcast.BroadcastWorker`, the one the app runs)
delivers it; halfway through the run the worker is stopped and a new one started (a restart).
Checked at the fakes: every user received the alert exactly once. Measured: the time until the
LINE side is complete, and Telegram's send rate against its configured limit.

    .venv/bin/python bench/broadcast.py [--users 10000] [--failures 0.05] [--rate 30]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test] [--write-results]

``--postgres``: run on a new database made on that server (dropped afterwards), else SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import insert, select

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bot.broadcast import BroadcastService, BroadcastWorker  # noqa: E402
from bot.db import make_engine, sessions, upgrade  # noqa: E402
from bot.db.models import Identity, User  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402
from bot.languages import LANGUAGES  # noqa: E402
from bot.settings import Settings  # noqa: E402
from connectors.broadcast import broadcasters  # noqa: E402
from tests.fakes import FakeLine, FakeTelegram  # noqa: E402

SECTION = "## Disaster alert broadcast (`make bench-broadcast`)"


def add_users(made: Any, count: int) -> tuple[list[str], list[int]]:
    line_ids = [f"U{uuid.uuid4().hex}" for _ in range(count // 2)]
    chats = [10_000_000 + i for i in range(count - count // 2)]
    with made() as session:
        first = (session.scalar(select(User.id).order_by(User.id.desc()).limit(1)) or 0) + 1
        session.execute(insert(User), [
            {"id": first + i, "language": LANGUAGES[i % len(LANGUAGES)], "subscribed": True,
             "created_at": dt.datetime.now(dt.UTC)} for i in range(count)
        ])
        identities = [("line", address) for address in line_ids] + [("telegram", str(chat)) for chat in chats]
        session.execute(insert(Identity), [
            {"user_id": first + i, "platform": platform, "platform_user_id": address, "unsubscribed": False,
             "created_at": dt.datetime.now(dt.UTC)} for i, (platform, address) in enumerate(identities)
        ])
        session.commit()
    return line_ids, chats


async def deliver(kb: KnowledgeBase, made: Any, senders: Any, alert: int, restart_after: float,
                  line: FakeLine) -> tuple[float | None, float]:
    """Run a worker, restart it once, and return (LINE complete after s, total s)."""
    start = time.monotonic()
    line_done: float | None = None
    worker = BroadcastWorker(kb, made, senders, idle=0.2, name="first")
    runner = asyncio.create_task(worker.run())
    restarted = False
    probe = BroadcastWorker(kb, made, {"line": senders["line"]})
    while True:
        await asyncio.sleep(0.1)
        elapsed = time.monotonic() - start
        if line_done is None and not await asyncio.to_thread(probe.pending, alert):
            line_done = elapsed
        if not restarted and elapsed >= restart_after:
            worker.stop()
            await runner
            worker = BroadcastWorker(kb, made, senders, idle=0.2, name="second")
            runner = asyncio.create_task(worker.run())
            restarted = True
        if not await asyncio.to_thread(worker.pending, alert):
            break
    worker.stop()
    await runner
    return line_done, time.monotonic() - start


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-broadcast-"))
    url = args.database_url or f"sqlite:///{tmp / 'consult.db'}"
    upgrade(url)
    engine = make_engine(url)
    made = sessions(engine)
    kb = KnowledgeBase.load(PROJECT / "knowledge_base")
    with FakeLine() as line, FakeTelegram() as telegram:
        line.chaos(args.failures, ("/v2/bot/message/multicast", "/v2/bot/message/push"), seed=args.seed)
        line.late_failure_rate = args.failures  # delivered, then answered 500: the retry key must save us
        telegram.chaos(args.failures, ("/sendMessage",), seed=args.seed + 1)
        settings = Settings(
            data_dir=tmp, database_url=url, telegram_broadcast_rate=args.rate,
            line_channel_secret=SecretStr(line.channel_secret),
            line_channel_access_token=SecretStr(line.access_token), line_api_url=line.url,
            telegram_bot_token=SecretStr(telegram.token), telegram_api_url=telegram.url,
        )
        line_ids, chats = add_users(made, args.users)
        senders = broadcasters(settings)
        try:
            service = BroadcastService(kb, made, senders)
            queued = time.monotonic()
            alert = await service.create_alert("rain_level4", {"area": "岩泉町", "time": "12:00"})
            queue_seconds = time.monotonic() - queued
            line_done, total = await deliver(kb, made, senders, alert, args.restart_after, line)
            report = service.report(alert)
        finally:
            for sender in senders.values():
                await sender.close()
            engine.dispose()
        line_counts = [line.received[u] for u in line_ids]
        telegram_counts = [telegram.received[c] for c in chats]
        tg_calls = telegram.calls_to("/sendMessage")
        injected = {
            "line": sum(1 for c in line.calls if c.status in (429, 500)),
            "telegram": sum(1 for c in tg_calls if c.status in (429, 500)),
        }
        return {
            "users": args.users, "restart_after": args.restart_after, "failures": args.failures, "rate": args.rate,
            "database": "PostgreSQL" if url.startswith("postgresql") else "SQLite",
            "queue_seconds": queue_seconds, "line_seconds": line_done, "total_seconds": total,
            "line_once": all(n == 1 for n in line_counts), "telegram_once": all(n == 1 for n in telegram_counts),
            "line_max": max(line_counts), "telegram_max": max(telegram_counts),
            "line_missing": sum(1 for n in line_counts if n == 0),
            "telegram_missing": sum(1 for n in telegram_counts if n == 0),
            "line_requests": len([c for c in line.calls if c.path.endswith(("/multicast", "/push"))]),
            "line_409": sum(1 for c in line.calls if c.status == 409),
            "line_late": line.late_failures,
            "telegram_requests": len(tg_calls),
            "telegram_request_rate": telegram.rate("/sendMessage", ok_only=False),
            "telegram_delivery_rate": telegram.rate("/sendMessage"),
            "injected": injected, "report": report["totals"],
        }


def markdown(r: dict[str, Any]) -> str:
    share = 100 * r["telegram_request_rate"] / r["rate"]
    line_ok = r["line_seconds"] is not None and r["line_seconds"] <= 30
    return "\n".join([
        SECTION,
        "",
        "`bench/broadcast.py`: one Level 4 heavy-rain alert (`rain_level4`) to "
        f"{r['users']:,} subscribers, half LINE and half Telegram, in all 11 languages, {r['database']}. "
        f"The fake LINE and Telegram APIs answer {r['failures']:.0%} of the send calls with 429 "
        "(Retry-After 1 s) or 500 at random (seeded); LINE also delivers another "
        f"{r['failures']:.0%} and then answers 500 (a lost answer); the alert worker is stopped and a new one started "
        f"after {r['restart_after']:.0f} s (a restart mid-send). Counted at the fakes.",
        "",
        f"{dt.date.today().isoformat()}, disaster branch (2 shared cores, other work running):",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| every LINE user received it exactly once | {'yes' if r['line_once'] else 'NO'} "
        f"(missing {r['line_missing']}, max {r['line_max']}) | yes |",
        f"| every Telegram user received it exactly once | {'yes' if r['telegram_once'] else 'NO'} "
        f"(missing {r['telegram_missing']}, max {r['telegram_max']}) | yes |",
        f"| LINE side complete after | {r['line_seconds']:.1f} s ({r['line_requests']} multicast requests, "
        f"{r['injected']['line']} answered 429/500 before and {r['line_late']} after delivering; "
        f"{r['line_409']} retries answered 409 by their retry key) | ≤ 30 s {'(met)' if line_ok else '(MISSED)'} |",
        f"| Telegram sendMessage rate | {r['telegram_request_rate']:.1f} requests/s = {share:.0f}% of "
        f"{r['rate']:.0f}/s ({r['telegram_delivery_rate']:.1f} delivered/s; {r['injected']['telegram']} "
        f"answered 429/500) | ≥ 90% {'(met)' if share >= 90 else '(MISSED)'} |",
        f"| queueing the alert (targeting, rendering, {r['users']:,} jobs) | {r['queue_seconds']:.2f} s | |",
        f"| whole alert delivered after | {r['total_seconds']:.1f} s | |",
        "",
        f"Delivery report totals: {r['report']}.",
        "",
    ])


def write_results(text: str) -> None:
    path = PROJECT / "bench" / "RESULTS.md"
    current = path.read_text(encoding="utf-8")
    if SECTION in current:
        pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
        current = pattern.sub(text.rstrip() + "\n", current)
    else:
        current = current.rstrip() + "\n\n" + text
    path.write_text(current, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--failures", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--restart-after", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1, help="LINE's random failures (Telegram: seed + 1)")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL", ""),
                        help="a PostgreSQL server URL to make a fresh database on")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    args.database_url = ""
    admin = None
    if args.postgres:
        import sqlalchemy

        admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"bench_broadcast_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        args.database_url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        result = asyncio.run(main_async(args))
    finally:
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    text = markdown(result)
    print(text)
    if args.write_results:
        write_results(text)
    ok = result["line_once"] and result["telegram_once"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
