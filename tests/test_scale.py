"""Scale-out: two app workers and two Rasa servers on PostgreSQL and Redis, under faults.

The topology (``tests/topology.py``): a throwaway PostgreSQL cluster of this module's own (the
app's database and Rasa's SQL tracker store; restarted by one test), the shared Redis (Rasa's lock
store, under a key prefix of its own), two ``rasa run`` with ``endpoints-scale.yml`` and two
``python -m bot serve`` workers. Users write on LINE (signed webhooks, spread over both workers
as a load balancer would, redelivered like LINE when not acknowledged) while the fake LINE API
answers bursts of 429 and 500. Mid-stream one Rasa server is killed, or one app worker is killed
with SIGKILL, or PostgreSQL restarts. Afterwards, counted at the fake LINE API: every message has
exactly one answer, none twice, and each user saw the answers in the order they wrote.
The dialogue suite (``tests/test_dialogues.py``) runs on the same topology through the REST
channel, each turn on the other worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy.orm import sessionmaker

from bot.engine_build import model_path, train_if_needed
from bot.knowledge import KnowledgeBase
from bot.settings import PROJECT
from tests.fakes import FakeLine, webhook_body
from tests.test_dialogues import Shown
from tests.test_dialogues import test_a_question_is_answered_or_the_best_answers_are_offered as test_dialogue_answer
from tests.test_dialogues import test_asking_for_a_person_opens_a_case as test_dialogue_person
from tests.test_dialogues import test_emergency_gets_119_guidance_first as test_dialogue_emergency
from tests.test_dialogues import test_greeting_and_thanks as test_dialogue_greeting
from tests.test_dialogues import test_language_menu_and_a_choice_that_sticks as test_dialogue_language
from tests.test_dialogues import test_not_understood_twice_suggests_then_offers_staff as test_dialogue_fallback
from tests.topology import (
    AppWorker,
    LineStream,
    Postgres,
    RasaServer,
    app_env,
    delivered_answers,
    explain,
    prepare_app_database,
    wait_for,
)

pytestmark = pytest.mark.engine

__all__ = [
    "test_dialogue_answer",
    "test_dialogue_emergency",
    "test_dialogue_fallback",
    "test_dialogue_greeting",
    "test_dialogue_language",
    "test_dialogue_person",
]

QUESTIONS = ("hello", "How do I renew my visa?", "thank you", "Where can I see a doctor at night?",
             "I lost my residence card", "good morning")
LEASE = 10
"""Seconds after which a dead worker's claimed message is taken over (the default is 60)."""


@dataclass
class Stack:
    postgres: Postgres
    engines: list[RasaServer]
    folder: Path
    conversations: Iterator[int] = field(default_factory=lambda: itertools.count(100_000, 100_000))

    def app_database(self) -> str:
        url = self.postgres.create_database(f"app_{uuid.uuid4().hex[:10]}")
        prepare_app_database(url, next(self.conversations))
        return url

    def engines_running(self) -> None:
        stopped = [engine for engine in self.engines if not engine.ready()]
        for engine in stopped:
            engine.stop()
            engine.start()
        for engine in stopped:
            engine.wait()


def _tracker_ready(url: str) -> bool:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            return bool(connection.execute(sqlalchemy.text("SELECT to_regclass('events') IS NOT NULL")).scalar())
    except sqlalchemy.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def stack(kb: KnowledgeBase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    train_if_needed(kb, PROJECT)
    assert model_path(PROJECT).exists()
    postgres = Postgres().start()
    folder = tmp_path_factory.mktemp("scale")
    servers: list[RasaServer] = []
    try:
        tracker = postgres.create_database("rasa")
        prefix = "consulttest" + uuid.uuid4().hex[:8]
        servers = [RasaServer(folder, tracker, prefix) for _ in range(2)]
        servers[0].start()  # the first creates the tracker tables; two at once would race on CREATE TABLE
        assert wait_for(lambda: _tracker_ready(tracker) or servers[0].ready(), 240, 1.0)
        servers[1].start()
        for server in servers:
            server.wait()
        yield Stack(postgres, servers, folder)
    finally:
        for server in servers:
            server.stop()
        postgres.stop()


@pytest.fixture
def make_workers(stack: Stack) -> Iterator[Callable[..., tuple[list[AppWorker], str]]]:
    started: list[AppWorker] = []

    def factory(line: FakeLine | None, count: int = 2) -> tuple[list[AppWorker], str]:
        stack.engines_running()
        database = stack.app_database()
        env = app_env(database, [engine.url for engine in stack.engines], line,
                      CONSULT_CLAIM_LEASE_SECONDS=str(LEASE), CONSULT_RETRY_INTERVAL="0.5",
                      CONSULT_RASA_TIMEOUT="20", CONSULT_LINE_TIMEOUT="3")
        workers = [AppWorker(stack.folder / "apps", env).start() for _ in range(count)]
        started.extend(workers)
        for worker in workers:
            worker.wait()
        return workers, database

    yield factory
    for worker in started:
        worker.stop()


# ---------------------------------------------------------------------- faults mid-stream


def storms(line: FakeLine) -> None:
    """Bursts of 429 (with Retry-After) and 500 from the LINE API during the stream."""
    line.fail("/v2/bot/message/reply", 500, {"message": "Internal error"}, times=12, after=15)
    line.fail("/v2/bot/message/push", 429, {"message": "The API rate limit has been exceeded."},
              headers={"Retry-After": "1"}, times=10, after=3)
    line.fail("/v2/bot/message/reply", 429, {"message": "The API rate limit has been exceeded."}, times=8, after=40)
    line.fail("/v2/bot/message/push", 500, {"message": "Internal error"}, times=6, after=30)


def run_stream(line: FakeLine, workers: list[AppWorker], fault: Callable[[], None], users: int = 6,
               seconds: float = 24.0, fault_at: float = 8.0, stream: LineStream | None = None) -> LineStream:
    """Each user writes about once a second; ``fault`` runs ``fault_at`` seconds in."""
    stream = stream or LineStream(line, [worker.url for worker in workers])

    async def user(index: int, client: httpx.AsyncClient) -> None:
        user_id = f"U{uuid.uuid4().hex}"
        started = time.monotonic()
        await asyncio.sleep(index * 0.15)
        for turn in itertools.count():
            if time.monotonic() - started > seconds:
                return
            _, event = stream.event(user_id, QUESTIONS[(index + turn) % len(QUESTIONS)])
            await stream.deliver(client, event)
            await asyncio.sleep(1.0)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0)) as client:
            tasks = [asyncio.create_task(user(i, client)) for i in range(users)]
            await asyncio.sleep(fault_at)
            await asyncio.to_thread(fault)
            await asyncio.gather(*tasks)

    asyncio.run(main())
    return stream


def assert_exactly_once_in_order(line: FakeLine, stream: LineStream, database: str, kb: KnowledgeBase,
                                 timeout: float = 100) -> dict[str, int]:
    """Wait until every message is answered, then check what every user was shown."""
    please_wait = kb.message("please_wait", "en")

    def answered(shown: dict[str, list[tuple[str, list[str]]]]) -> set[str]:
        return {event for calls in shown.values() for event, texts in calls if any(t != please_wait for t in texts)}

    expected = {event for events in stream.sent.values() for event in events}
    assert wait_for(lambda: expected <= answered(delivered_answers(line, stream, database)), timeout, 1.0), (
        f"unanswered: {len(expected - answered(delivered_answers(line, stream, database)))} of {len(expected)}")
    time.sleep(LEASE + 3)  # a late duplicate (a claim taken over twice) would arrive by now
    shown = delivered_answers(line, stream, database)
    notices = 0
    for user, events in stream.sent.items():
        calls = shown.get(user, [])
        answers = Counter(event for event, texts in calls if any(t != please_wait for t in texts))
        twice = [event for event, count in answers.items() if count > 1]
        assert answers == Counter(events), (f"user {user}: answers per message {answers} for {len(events)} messages\n"
                                            + "\n".join(explain(line, stream, database, e) for e in twice))
        positions = [events.index(event) for event, _ in calls]
        assert positions == sorted(positions), f"user {user} saw answers out of order: {positions}"
        notices += sum(1 for _, texts in calls if texts == [please_wait])
    storm = Counter(call.status for call in line.calls if call.status in (429, 500))
    assert storm[429] and storm[500], f"the LINE API's storms did not happen: {storm}"
    return {"messages": len(expected), "please_wait": notices, "redeliveries": stream.redeliveries,
            "connection_errors": stream.connection_errors, "storm": dict(storm)}


def test_postgres_restart_mid_stream_loses_and_repeats_nothing(
    stack: Stack, make_workers: Callable[..., tuple[list[AppWorker], str]], fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    workers, database = make_workers(fake_line)
    storms(fake_line)
    stream = run_stream(fake_line, workers, lambda: stack.postgres.restart(down=3.0))
    figures = assert_exactly_once_in_order(fake_line, stream, database, kb)
    assert figures["messages"] >= 100
    assert figures["redeliveries"] > 0, "no webhook met the restart"
    print("postgres restart:", figures)


def test_app_worker_killed_mid_stream_its_claimed_work_is_taken_over(
    stack: Stack, make_workers: Callable[..., tuple[list[AppWorker], str]], fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    workers, database = make_workers(fake_line)
    storms(fake_line)
    stream: LineStream | None = None

    def kill_while_busy() -> None:
        """A burst of new users' messages to worker 1 only, then kill -9 it while it answers them."""
        assert stream is not None
        with httpx.Client(timeout=10) as client:
            for i in range(6):
                _, event = stream.event(f"U{uuid.uuid4().hex}", QUESTIONS[i % len(QUESTIONS)])
                body = webhook_body(event)
                response = client.post(f"{workers[0].url}/webhooks/line", content=body, headers={
                    "content-type": "application/json", "x-line-signature": fake_line.sign(body)})
                assert response.status_code == 200
        workers[0].kill()

    stream = LineStream(fake_line, [worker.url for worker in workers])
    run_stream(fake_line, workers, kill_while_busy, stream=stream)
    figures = assert_exactly_once_in_order(fake_line, stream, database, kb)
    assert figures["connection_errors"] > 0, "the killed worker was not asked again"
    assert figures["please_wait"] == 0, "a killed app worker does not make users wait for the engine"
    engine = sqlalchemy.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        taken_over = connection.execute(sqlalchemy.text("SELECT coalesce(sum(takeovers), 0) FROM messages")).scalar()
    engine.dispose()
    redelivered = workers[1].log_text().count("delivered again")
    assert taken_over or redelivered, "the killed worker had nothing claimed: the test proved nothing"
    print("app worker killed:", figures, "messages taken over:", taken_over, "deliveries taken over:", redelivered)


def test_rasa_server_killed_mid_stream_the_other_answers(
    stack: Stack, make_workers: Callable[..., tuple[list[AppWorker], str]], fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    workers, database = make_workers(fake_line)
    storms(fake_line)
    stream = run_stream(fake_line, workers, stack.engines[0].kill)
    figures = assert_exactly_once_in_order(fake_line, stream, database, kb)
    assert figures["please_wait"] == 0, "with a second engine nobody is told to wait"
    assert not stack.engines[0].ready()
    print("rasa killed:", figures)


# ---------------------------------------------------------------------- the dialogue suite


class AlternatingRestDriver:
    """A web-chat user whose every turn goes to the other app worker (as a round-robin balancer)."""

    def __init__(self, workers: list[AppWorker], database: str) -> None:
        self.urls = [worker.url for worker in workers]
        self.turn = 0
        self.sender = f"user-{uuid.uuid4().hex[:8]}"
        self.http = httpx.Client(timeout=60)
        engine = sqlalchemy.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
        self.engine = engine
        # what the shared dialogue tests read from the database: the same tables the workers write
        self.client: Any = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(
            assistant=SimpleNamespace(sessions=sessionmaker(engine)))))

    def say(self, text: str) -> list[Shown]:
        url = self.urls[self.turn % len(self.urls)]
        self.turn += 1
        response = self.http.post(f"{url}/webhooks/rest/webhook", json={"sender": self.sender, "message": text})
        assert response.status_code == 200, response.text
        return [Shown(r["text"], tuple(b["title"] for b in r.get("buttons", [])),
                      tuple(b["payload"] for b in r.get("buttons", []))) for r in response.json()]

    def press(self, shown: Shown, title: str) -> list[Shown]:
        return self.say(shown.press[shown.buttons.index(title)])

    def close(self) -> None:
        self.http.close()
        self.engine.dispose()


@pytest.fixture
def user(make_workers: Callable[..., tuple[list[AppWorker], str]]) -> Iterator[AlternatingRestDriver]:
    workers, database = make_workers(None)
    driver = AlternatingRestDriver(workers, database)
    yield driver
    driver.close()
