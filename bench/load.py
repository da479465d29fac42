"""Load: signed LINE webhooks and REST-channel messages at fixed rates, open-loop.

Starts the product as separate processes and the fake LINE API (tests/fakes.py) in this one:

- ``--topology embedded`` (the default install): one app (``python -m bot serve``, SQLite), one
  Rasa (``endpoints.yml``, in-memory stores);
- ``--topology scale``: two app workers on a throwaway PostgreSQL cluster, two Rasa servers
  (``endpoints-scale.yml``: SQL tracker store on that cluster, lock store on the Redis at
  127.0.0.1:6379 under a key prefix of their own); requests alternate between the workers.

For every rate (``--rates``, messages per second) and channel it sends on schedule for
``--seconds`` (it never waits for an answer before sending the next message), each message a
held-out question from one of many users, then waits for the stragglers. It reports the
throughput sustained during the window (answers that arrived in it, per second), the latency from
sending to the answer (LINE: the reply or push call arriving at the fake LINE API; REST: the HTTP
answer) at p50/p95/p99, the webhook acknowledgement time at p50/p99, and the peak resident memory
of every process. Markdown for bench/RESULTS.md.

    .venv/bin/python bench/load.py [--topology embedded|scale] [--rates 10,50,100] [--seconds 60]
                                   [--channels line,rest] [--profile DIR]

``--profile DIR`` records every app and Rasa process with py-spy (``pip install py-spy``) into DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bot.__main__ import start_engine, stop_process  # noqa: E402
from bot.engine_build import train_if_needed  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.fakes import Call, FakeLine, free_port, text_event, webhook_body  # noqa: E402
from tests.topology import (  # noqa: E402
    AppWorker,
    Postgres,
    RasaServer,
    answer_keys,
    app_env,
    cpu_seconds,
    prepare_app_database,
    rss_mb,
    wait_for,
)


class TimedLine(FakeLine):
    """The fake LINE API, also noting when each call arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, Call]] = []

    def _record(self, call: Call) -> None:
        super()._record(call)
        with self._lock:
            self.arrivals.append((time.time(), call))


def questions() -> list[str]:
    pool: list[str] = []
    for path in sorted((PROJECT / "bench" / "heldout" / "faq").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for texts in data["questions"].values():
            pool.extend(texts)
    pool.sort(key=lambda text: hash((text, "load")))
    return pool


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Topology:
    apps: list[AppWorker]
    engines: list[Any]
    database: str
    folder: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def pids(self) -> dict[str, int]:
        found = {}
        for i, app in enumerate(self.apps):
            if app.process is not None:
                found[f"app {i + 1}"] = app.process.pid
        for i, engine in enumerate(self.engines):
            process = engine.process if isinstance(engine, RasaServer) else engine
            if process is not None:
                found[f"Rasa {i + 1}"] = process.pid
        return found


@contextlib.contextmanager
def topology(kind: str, line: FakeLine, folder: Path) -> Iterator[Topology]:
    with contextlib.ExitStack() as stack:
        extra = {"CONSULT_LOG_LEVEL": "WARNING", "CONSULT_DATA_DIR": str(folder / "data")}
        if kind == "embedded":
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            engine = start_engine(Settings(data_dir=folder, rasa_url=url), port, folder / "rasa.log")
            stack.callback(stop_process, engine)
            database = f"sqlite:///{folder / 'data' / 'consult.db'}"
            apps = [AppWorker(folder, app_env(None, [url], line, **extra))]
            wait_ready(url)
            engines: list[Any] = [engine]
        else:
            postgres = Postgres().start()
            stack.callback(postgres.stop)
            tracker = postgres.create_database("rasa")
            prefix = "consultbench" + uuid.uuid4().hex[:8]
            servers = [RasaServer(folder, tracker, prefix) for _ in range(2)]
            for server in servers:
                stack.callback(server.stop)
            servers[0].start()
            servers[0].wait()  # it creates the tracker tables first
            servers[1].start()
            servers[1].wait()
            database = postgres.create_database("app")
            prepare_app_database(database, 1)
            apps = [AppWorker(folder, app_env(database, [s.url for s in servers], line, **extra)) for _ in range(2)]
            engines = servers
        for app in apps:
            app.start()
            stack.callback(app.stop)
        for app in apps:
            app.wait()
        yield Topology(apps, engines, database, folder)


def wait_ready(url: str, timeout: float = 240) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{url}/webhooks/consult/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(up, timeout, 0.5):
        raise SystemExit(f"{url} did not answer")


@dataclass
class Run:
    channel: str
    rate: float
    seconds: float
    sent: int = 0
    refused: int = 0
    later: int = 0
    """REST: answered with an empty list (the answer follows by polling: an older message of the user was open)."""
    acks: list[float] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    """LINE: webhook event id → the key of its message (its reply token)."""
    rss: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process used from the first message to the last answer."""
    window: tuple[float, float] = (0.0, 0.0)


class RssSampler:
    """Peak resident memory of each process, sampled every half second."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mb(pid))
            self._stop.wait(0.5)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self.cpu_start[name] for name, pid in self.pids.items()}


async def send_all(run: Run, urls: list[str], line: TimedLine, pool: list[str]) -> None:
    users = [f"U{uuid.uuid4().hex}" for _ in range(max(50, int(run.rate * 10)))]
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0), limits=limits) as client:
        tasks: list[asyncio.Task[None]] = []
        total = int(run.rate * run.seconds)
        start = time.monotonic()
        run.window = (time.time(), time.time() + run.seconds)
        for i in range(total):
            delay = start + i / run.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            url = urls[i % len(urls)]
            text = pool[i % len(pool)]
            user = users[i % len(users)]
            if run.channel == "line":
                tasks.append(asyncio.create_task(send_line(run, client, url, line, user, text)))
            else:
                tasks.append(asyncio.create_task(send_rest(run, client, url, user, text, i)))
            run.sent += 1
        await asyncio.gather(*tasks)


async def send_line(run: Run, client: httpx.AsyncClient, url: str, line: TimedLine, user: str, text: str) -> None:
    token = line.issue_reply_token(user)
    event = text_event(user, token, text)
    body = webhook_body(event)
    headers = {"content-type": "application/json", "x-line-signature": line.sign(body)}
    started = time.time()
    run.tokens[event["webhookEventId"]] = "token:" + token
    run.started["token:" + token] = started
    try:
        response = await client.post(f"{url}/webhooks/line", content=body, headers=headers)
    except httpx.HTTPError:
        run.refused += 1
        return
    if response.status_code != 200:
        run.refused += 1
        return
    run.acks.append(time.time() - started)


async def send_rest(run: Run, client: httpx.AsyncClient, url: str, user: str, text: str, i: int) -> None:
    started = time.time()
    key = f"rest-{i}-{uuid.uuid4().hex[:6]}"
    run.started[key] = started
    try:
        response = await client.post(f"{url}/webhooks/rest/webhook", json={"sender": user, "message": text})
    except httpx.HTTPError:
        run.refused += 1
        return
    if response.status_code != 200:
        run.refused += 1
        return
    if not response.json():
        run.later += 1
        return
    now = time.time()
    run.acks.append(now - started)
    run.answered[key] = now


def collect_line(run: Run, line: TimedLine, database: str, since: int) -> None:
    """The first answer call per message: the reply by its token, a push by its retry key."""
    by_key = answer_keys(database)
    for at, call in line.arrivals[since:]:
        if call.status != 200:
            continue
        if call.path == "/v2/bot/message/reply":
            key = "token:" + str(call.body.get("replyToken", ""))
        elif call.path == "/v2/bot/message/push":
            key = run.tokens.get(by_key.get(call.headers.get("X-Line-Retry-Key", "")) or "", "")
        else:
            continue
        if key in run.started and key not in run.answered:
            run.answered[key] = at


def report(run: Run) -> str:
    end = run.window[1]
    messages = list(run.started)
    latencies = [(run.answered[k] - run.started[k]) * 1000 for k in messages if k in run.answered]
    in_window = sum(1 for k in messages if k in run.answered and run.answered[k] <= end)
    last = max(run.answered.values(), default=run.window[0] + run.seconds)
    overall = len(latencies) / max(run.seconds, last - run.window[0])
    acks = [a * 1000 for a in run.acks]
    rss = ", ".join(f"{name} {mb:.0f}" for name, mb in run.rss.items())
    cpu = ", ".join(f"{name} {seconds * 1000 / max(1, len(latencies)):.0f}" for name, seconds in run.cpu.items())
    total_rss = sum(run.rss.values())
    return (f"| {run.channel} | {run.rate:g}/s × {run.seconds:g} s | {len(messages)} | {len(latencies)} | "
            f"{in_window / run.seconds:.1f}/s, {overall:.1f}/s | "
            f"{percentile(latencies, 0.5):.0f} | {percentile(latencies, 0.95):.0f} | "
            f"{percentile(latencies, 0.99):.0f} | {statistics.median(acks) if acks else float('nan'):.1f} | "
            f"{percentile(acks, 0.99):.1f} | {rss} (total {total_rss:.0f}) | {cpu} | "
            f"{run.refused} | {run.later} |")


def profile(pids: dict[str, int], folder: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    folder.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format",
                          "speedscope", "--output", str(folder / f"{name.replace(' ', '')}.json"), "--nonblocking"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in pids.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", choices=("embedded", "scale"), default="embedded")
    parser.add_argument("--rates", default="10,50,100")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--channels", default="line,rest")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for answers after a run")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    train_if_needed(KnowledgeBase.load(PROJECT / "knowledge_base"), PROJECT)
    pool = questions()
    rows: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-load-"))
    with TimedLine() as line, topology(args.topology, line, folder) as top:
        urls = [app.url for app in top.apps]
        with httpx.Client(timeout=60) as client:  # warm up every process
            for i, text in enumerate(pool[:20]):
                client.post(f"{urls[i % len(urls)]}/webhooks/rest/webhook", json={"sender": "warmup", "message": text})
        for channel in args.channels.split(","):
            for rate in (float(r) for r in args.rates.split(",")):
                run = Run(channel, rate, args.seconds)
                since = len(line.arrivals)
                pids = top.pids()
                spies = profile(pids, args.profile / f"{channel}-{rate:g}", args.seconds) if args.profile else []
                with RssSampler(pids) as sampler:
                    asyncio.run(send_all(run, urls, line, pool))
                    if channel == "line":
                        expected = len(run.started) - run.refused

                        def done(run: Run = run, since: int = since, expected: int = expected) -> bool:
                            collect_line(run, line, top.database, since)
                            return len(run.answered) >= expected

                        wait_for(done, args.drain, 1.0)
                    run.cpu = sampler.cpu()
                run.rss = dict(sampler.peak)
                for spy in spies:
                    spy.wait()
                rows.append(report(run))
                print(rows[-1], flush=True)
    print(f"\nTopology: {args.topology}; open-loop, held-out questions from {len(pool)} in every language; "
          f"latency from sending to the answer (LINE: reply/push call at the fake LINE API; REST: the HTTP answer).\n")
    print("Sustained: answers that arrived within the sending window per second, and all answers over the time "
          "until the last one. CPU ms per answer: CPU time each process used during the run, per answer (other "
          "load on a shared machine hardly changes it). REST acks are the whole answer. Refused: no 200; "
          "later: REST answered by polling.\n")
    print("| channel | rate | sent | answered | sustained | p50 ms | p95 ms | p99 ms | ack p50 ms | ack p99 ms | "
          "peak RSS MB | CPU ms per answer | refused | later |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
