"""The scale-out topology on one machine, for the fault tests and the load benchmark.

Real processes: app workers (``python -m bot serve``, each its own port), Rasa servers
(``rasa run`` with ``endpoints-scale.yml``: SQL tracker store and Redis lock store), a throwaway
PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temporary folder, on a free port, so that it can
be restarted without touching anyone else's server) and the shared Redis (keys under a prefix of
their own). A :class:`Balancer`-like sender spreads signed LINE webhooks over the workers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy

from bot.__main__ import start_engine, stop_process
from bot.settings import PROJECT, Settings
from tests.fakes import FakeLine, free_port

REDIS_URL = os.environ.get("TEST_REDIS_URL", "127.0.0.1:6379")


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(child) for child in children)
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its descendants, in seconds."""
    import os as _os

    tick = _os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(child) for child in children)
    return total


class Postgres:
    """A PostgreSQL cluster of its own: ``initdb`` in a temporary folder, trust auth, a free port."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not binaries:
            raise RuntimeError("PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql")
        self.bin = Path(binaries[-1]).parent
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="consult-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8")
        self._ctl("start")
        return self

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", action, *extra)

    def restart(self, down: float = 0.0) -> None:
        """A fast restart: every connection is cut; the server is back ``down`` seconds later."""
        if not down:
            self._ctl("restart", "-m", "fast")
            return
        self._ctl("stop", "-m", "fast")
        time.sleep(down)
        self._ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = sqlalchemy.create_engine(self.url(driver="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


def prepare_app_database(url: str, first_conversation: int) -> None:
    """Migrate, and start conversation ids at ``first_conversation`` (Rasa's tracker store keys
    conversations by id: a fresh app database next to a used tracker store must not reuse ids)."""
    from bot.db import upgrade

    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(sa_url)
    engine = sqlalchemy.create_engine(sa_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                f"ALTER SEQUENCE conversations_id_seq RESTART WITH {int(first_conversation)}"))
    finally:
        engine.dispose()


class Process:
    """A product process the tests start in its own session, and can stop or kill."""

    process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """kill -9 at once, as on a crash or the OOM killer: no shutdown, whatever it had claimed stays claimed."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


class RasaServer(Process):
    """``rasa run`` with ``endpoints-scale.yml`` on its own port."""

    def __init__(self, folder: Path, tracker_url: str, lock_prefix: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        host, _, port = REDIS_URL.partition(":")
        self.env = {
            "CONSULT_TRACKER_STORE_URL": tracker_url,
            "CONSULT_REDIS_HOST": host,
            "CONSULT_REDIS_PORT": port or "6379",
            "CONSULT_REDIS_DB": "0",
            "CONSULT_LOCK_PREFIX": lock_prefix,
        }
        self.process = None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/webhooks/consult/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        settings = Settings(data_dir=self.folder, engine_endpoints=PROJECT / "endpoints-scale.yml")
        self.process = start_engine(settings, self.port, self.folder / f"rasa-{self.port}.log", env=self.env)

    def wait(self, timeout: float = 240) -> None:
        if not wait_for(self.ready, timeout, 0.5):
            log = (self.folder / f"rasa-{self.port}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Rasa did not start:\n{log}")



class AppWorker(Process):
    """``python -m bot serve`` as its own process."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.env = env
        self.process = None

    def start(self) -> AppWorker:
        env = {**os.environ, **self.env, "CONSULT_PORT": str(self.port)}
        if "DATABASE_URL" not in self.env:
            env.pop("DATABASE_URL", None)
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"app-{self.port}.log").open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve"], cwd=PROJECT, env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self, timeout: float = 120) -> None:
        if not wait_for(self.ready, timeout, 0.2):
            log = (self.folder / f"app-{self.port}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the app worker did not start:\n{log}")


    def log_text(self) -> str:
        return (self.folder / f"app-{self.port}.log").read_text(errors="replace")


def app_env(database_url: str | None, rasa_urls: list[str], line: FakeLine | None, **extra: str) -> dict[str, str]:
    """A worker's environment: ``database_url`` None means the default SQLite file in ``CONSULT_DATA_DIR``."""
    env = {
        "CONSULT_RASA_URL": ",".join(rasa_urls),
        "CONSULT_LOG_LEVEL": "INFO",
        # each test user writes about once a second, beyond any human pace: the per-user limit
        # (tests/test_rate_limit.py) would answer with a notice instead of counting every answer
        "CONSULT_RATE_LIMIT_PER_MINUTE": "0",
        **extra,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    if line is not None:
        env.update({
            "CONSULT_LINE_CHANNEL_SECRET": line.channel_secret,
            "CONSULT_LINE_CHANNEL_ACCESS_TOKEN": line.access_token,
            "CONSULT_LINE_API_URL": line.url,
            "CONSULT_LINE_DATA_API_URL": line.url,
        })
    return env


@contextlib.contextmanager
def engines(count: int, folder: Path, tracker_url: str) -> Iterator[list[RasaServer]]:
    """``count`` Rasa servers sharing one tracker store and one Redis lock store (own key prefix)."""
    prefix = "consulttest" + uuid.uuid4().hex[:8]
    servers = [RasaServer(folder, tracker_url, prefix) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait()
        yield servers
    finally:
        for server in servers:
            server.stop()


# ---------------------------------------------------------------------- a stream of LINE webhooks


class LineStream:
    """Users writing on LINE: signed webhooks, spread over the workers as a load balancer would.

    Like LINE with webhook redelivery on: a webhook that gets no 200 is sent again (same
    ``webhookEventId``, ``isRedelivery``) a second later; a worker that refuses the connection is
    skipped for the next one (the balancer's health check). Each user sends the next message
    once the previous one was acknowledged, so the order of storing is the order of sending.
    """

    def __init__(self, line: FakeLine, workers: list[str]) -> None:
        self.line = line
        self.workers = workers
        self.turn = 0
        self.sent: dict[str, list[str]] = {}
        """user → event ids in the order sent."""
        self.tokens: dict[str, str] = {}
        """reply token → event id."""
        self.sent_at: dict[str, float] = {}
        self.acks: list[float] = []
        self.redeliveries = 0
        self.connection_errors = 0

    def event(self, user: str, text: str) -> tuple[str, dict[str, Any]]:
        from tests.fakes import text_event

        token = self.line.issue_reply_token(user)
        event_id = uuid.uuid4().hex.upper()[:26]
        self.tokens[token] = event_id
        self.sent.setdefault(user, []).append(event_id)
        return event_id, text_event(user, token, text, event_id=event_id)

    async def deliver(self, client: httpx.AsyncClient, event: dict[str, Any], deadline: float = 120) -> None:
        import asyncio

        from tests.fakes import webhook_body

        give_up = time.monotonic() + deadline
        self.sent_at.setdefault(event["webhookEventId"], time.time())
        while time.monotonic() < give_up:
            body = webhook_body(event)
            headers = {"content-type": "application/json", "x-line-signature": self.line.sign(body)}
            for _ in range(len(self.workers)):
                url = self.workers[self.turn % len(self.workers)]
                self.turn += 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/webhooks/line", content=body, headers=headers)
                except httpx.TransportError:
                    self.connection_errors += 1
                    continue
                if response.status_code == 200:
                    self.acks.append(time.perf_counter() - started)
                    return
                break
            self.redeliveries += 1
            await asyncio.sleep(1.0)
            event = {**event, "deliveryContext": {"isRedelivery": True}}
        raise AssertionError(f"webhook {event['webhookEventId']} never acknowledged")


def delivered_answers(line: FakeLine, stream: LineStream, database_url: str) -> dict[str, list[tuple[str, list[str]]]]:
    """What each user was shown, in order: ``user → [(event id answered, texts of that call)]``.

    A reply call is matched to its event by the reply token; a push by its ``X-Line-Retry-Key``,
    derived from the first stored reply (whose ``in_reply_to`` is the inbound message).
    """
    by_key = answer_keys(database_url)
    shown: dict[str, list[tuple[str, list[str]]]] = {}
    for call in list(line.calls):
        if call.status != 200:
            continue
        if call.path == "/v2/bot/message/reply":
            event_id = stream.tokens.get(call.body.get("replyToken", ""))
            user = call.body.get("_user", "")
        elif call.path == "/v2/bot/message/push":
            event_id = by_key.get(call.headers.get("X-Line-Retry-Key", ""))
            user = call.body.get("to", "")
        else:
            continue
        shown.setdefault(user, []).append((event_id or "?", [m["text"] for m in call.body["messages"]]))
    return shown


def explain(line: FakeLine, stream: LineStream, database_url: str, event_id: str) -> str:
    """What happened to one event: its stored rows, their delivery attempts, the LINE calls it caused."""
    from connectors.line import retry_key

    engine = sqlalchemy.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    lines = [f"event {event_id}:"]
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT id, direction, status, attempts, takeovers, created_at, claimed_at, in_reply_to "
                "FROM messages WHERE platform_event_id = :e OR in_reply_to IN "
                "(SELECT id FROM messages WHERE platform_event_id = :e) ORDER BY id"), {"e": event_id}).all()
            lines += [f"  message {tuple(row)}" for row in rows]
            ids = [row[0] for row in rows]
            if ids:
                attempts = connection.execute(sqlalchemy.text(
                    "SELECT message_id, outcome, detail, created_at FROM delivery_attempts "
                    "WHERE message_id = ANY(:ids) ORDER BY id"), {"ids": ids}).all()
                lines += [f"  attempt {tuple(row)}" for row in attempts]
            keys = {retry_key(row[0], []) for row in rows if row[1] == "out"}
    finally:
        engine.dispose()
    tokens = {token for token, event in stream.tokens.items() if event == event_id}
    for call in list(line.calls):
        if call.body.get("replyToken") in tokens or call.headers.get("X-Line-Retry-Key") in keys:
            lines.append(f"  LINE {call.method} {call.path} {call.status} at {call.at:.3f} "
                         f"key={call.headers.get('X-Line-Retry-Key', '-')}")
    return "\n".join(lines)


def answer_keys(database_url: str) -> dict[str, str | None]:
    """``X-Line-Retry-Key`` of every stored reply → the ``webhookEventId`` of the message it answers."""
    from connectors.line import retry_key

    engine = sqlalchemy.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            inbound = dict(connection.execute(sqlalchemy.text(
                "SELECT id, platform_event_id FROM messages WHERE direction = 'in'")).all())
            outbound = connection.execute(sqlalchemy.text(
                "SELECT id, in_reply_to FROM messages WHERE direction = 'out'")).all()
    finally:
        engine.dispose()
    return {retry_key(out_id, []): inbound.get(reply_to) for out_id, reply_to in outbound}
