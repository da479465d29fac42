"""Two workers on one database: claims, leases and order (no Rasa: a scripted engine over real HTTP).

A worker is an :class:`Assistant` of its own (its own engine client and database connections), as
a second ``python -m bot serve`` would be. A worker "dies" when its task is cancelled in the middle
of answering: what it had claimed stays claimed, as after a kill -9.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from bot.db.models import Message
from bot.knowledge import KnowledgeBase
from bot.pipeline import Assistant
from bot.ports import Inbound
from bot.settings import Settings
from bot.web.app import build_assistant
from connectors.line import LineConnector
from tests.fakes import FakeLine, FakeServer


class ScriptedEngine(FakeServer):
    """Rasa's consult channel: answers every message with a greeting after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.asked = 0

    def app(self) -> web.Application:
        app = web.Application()

        async def ready(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def answer(_: web.Request) -> web.Response:
            self.asked += 1
            await asyncio.sleep(self.delay)
            return web.json_response({"messages": [{"custom": {"message": "greet_reply"}}],
                                      "parse": {"intent": {"name": "greet", "confidence": 0.99}}})

        app.router.add_get("/webhooks/consult/", ready)
        app.router.add_post("/webhooks/consult/webhook", answer)
        return app


@pytest.fixture
def slow_engine() -> Iterator[ScriptedEngine]:
    with ScriptedEngine(delay=30.0) as engine:
        yield engine


@pytest.fixture
def quick_engine() -> Iterator[ScriptedEngine]:
    with ScriptedEngine() as engine:
        yield engine


Scenario = Callable[[Assistant, Assistant], Awaitable[None]]


@pytest.fixture
def run_workers(database_url: str, slow_engine: ScriptedEngine, quick_engine: ScriptedEngine,
                fake_line: FakeLine, tmp_path: Any) -> Callable[[Scenario], None]:
    """Runs a scenario with two workers: the first asks an engine that hangs, the second one that
    answers at once. Lease: 1 s."""

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            made = []
            for engine in (slow_engine, quick_engine):
                settings = Settings(data_dir=tmp_path, database_url=database_url, rasa_url=engine.url,
                                    claim_lease_seconds=1.0, rasa_timeout=60.0)
                line = LineConnector(fake_line.access_token, fake_line.url, 2.0, 50.0)
                made.append(build_assistant(settings, {"line": line}))
            try:
                await scenario(made[0], made[1])
            finally:
                for assistant in made:
                    await assistant.engine.close()
                    await assistant.connectors["line"].close()  # type: ignore[attr-defined]
                    bind = assistant.sessions.kw.get("bind")
                    if bind is not None:
                        bind.dispose()

        asyncio.run(main())

    return run


def inbound(user: str, text: str = "hello") -> Inbound:
    return Inbound(platform="line", platform_user_id=user, text=text, event_id=uuid.uuid4().hex)


def statuses(assistant: Assistant) -> dict[int, str]:
    with assistant.sessions() as session:
        return dict(session.execute(select(Message.id, Message.status).where(Message.direction == "in")).all())


async def die_while_answering(worker: Assistant, message_id: int, engine: ScriptedEngine) -> None:
    """Start answering on ``worker`` and kill it once it waits for the engine."""
    task = asyncio.create_task(worker.respond(message_id))
    for _ in range(200):
        if engine.asked:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_message_claimed_by_a_dead_worker_is_answered_by_the_other_after_the_lease(
    run_workers: Callable[[Scenario], None], slow_engine: ScriptedEngine, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    async def scenario(dead: Assistant, alive: Assistant) -> None:
        user = f"U{uuid.uuid4().hex}"
        message_id, _ = dead.store_inbound(inbound(user))
        await die_while_answering(dead, message_id, slow_engine)
        assert statuses(alive) == {message_id: "processing"}
        assert await alive.retry_waiting() == 0  # the lease still runs: nobody takes it yet
        await asyncio.sleep(1.2)
        assert await alive.retry_waiting() == 1
        assert [m["text"] for m in fake_line.delivered(user)] == [kb.message("greet_reply", "en")]
        assert statuses(alive) == {message_id: "answered"}

    run_workers(scenario)


def test_a_message_a_worker_was_answering_when_it_was_shut_down_is_given_back_not_left_to_the_lease(
    run_workers: Callable[[Scenario], None], slow_engine: ScriptedEngine, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    async def scenario(stopping: Assistant, alive: Assistant) -> None:
        user = f"U{uuid.uuid4().hex}"
        message_id, _ = stopping.store_inbound(inbound(user))
        stopping.stopping = True  # what the app's shutdown sets before it cancels its worker
        await die_while_answering(stopping, message_id, slow_engine)
        assert statuses(alive) == {message_id: "received"}
        await asyncio.sleep(1.1)  # a "received" message is the background loop's after a second
        assert await alive.retry_waiting() == 1
        assert [m["text"] for m in fake_line.delivered(user)] == [kb.message("greet_reply", "en")]
        with alive.sessions() as session:
            row = session.get(Message, message_id)
            assert row is not None and (row.status, row.attempts, row.takeovers) == ("answered", 1, 0)

    run_workers(scenario)


def test_a_worker_that_comes_back_after_losing_its_claim_does_not_answer_twice(
    run_workers: Callable[[Scenario], None], slow_engine: ScriptedEngine, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    async def scenario(slow: Assistant, quick: Assistant) -> None:
        slow_engine.delay = 2.0
        user = f"U{uuid.uuid4().hex}"
        message_id, _ = slow.store_inbound(inbound(user))
        late = asyncio.create_task(slow.respond(message_id))
        await asyncio.sleep(1.3)  # the slow worker's lease has run out while the engine thinks
        assert await quick.retry_waiting() == 1
        assert await late == []
        with quick.sessions() as session:
            replies = session.scalars(select(Message.text).where(Message.in_reply_to == message_id)).all()
        assert replies == [kb.message("greet_reply", "en")]
        assert [m["text"] for m in fake_line.delivered(user)] == [kb.message("greet_reply", "en")]

    run_workers(scenario)


def test_a_newer_message_waits_for_the_older_one_of_its_conversation(
    run_workers: Callable[[Scenario], None], slow_engine: ScriptedEngine, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    async def scenario(dead: Assistant, alive: Assistant) -> None:
        user = f"U{uuid.uuid4().hex}"
        first, _ = dead.store_inbound(inbound(user, "hello"))
        await die_while_answering(dead, first, slow_engine)
        second, _ = alive.store_inbound(inbound(user, "good morning"))
        assert await alive.respond(second) == []  # not before the first one
        assert statuses(alive) == {first: "processing", second: "waiting_engine"}
        await asyncio.sleep(1.2)
        await alive.retry_waiting()
        assert statuses(alive) == {first: "answered", second: "answered"}
        assert [m["text"] for m in fake_line.delivered(user)] == [kb.message("greet_reply", "en")] * 2
        with alive.sessions() as session:
            order = session.scalars(select(Message.in_reply_to).where(Message.direction == "out")
                                    .order_by(Message.id)).all()
        assert order == [first, second]

    run_workers(scenario)


def test_an_answer_waits_while_an_older_one_is_retried(
    run_workers: Callable[[Scenario], None], fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    async def scenario(_: Assistant, worker: Assistant) -> None:
        user = f"U{uuid.uuid4().hex}"
        fake_line.expire_reply_tokens()
        fake_line.fail("/v2/bot/message/push", 429, {"message": "rate limit"}, headers={"Retry-After": "1"})
        first, _ = worker.store_inbound(inbound(user, "hello"))
        await worker.respond(first)
        second, _ = worker.store_inbound(inbound(user, "good morning"))
        await worker.respond(second)
        assert fake_line.delivered(user) == []  # the second answer does not overtake the first
        for _ in range(40):
            await worker.retry_deliveries()
            if len(fake_line.delivered(user)) == 2:
                break
            await asyncio.sleep(0.25)
        pushes = [c for c in fake_line.calls_to("/v2/bot/message/push") if c.status == 200]
        assert [c.body["messages"][0]["text"] for c in pushes] == [kb.message("greet_reply", "en")] * 2
        with worker.sessions() as session:
            first_reply = session.scalar(select(Message.id).where(Message.in_reply_to == first))
        from connectors.line import retry_key

        assert pushes[0].headers["X-Line-Retry-Key"] == retry_key(first_reply, [])

    run_workers(scenario)


def test_the_engine_client_fails_over_to_the_next_engine(quick_engine: ScriptedEngine) -> None:
    from bot.engine_client import EngineClient
    from tests.conftest import free_port

    async def ask() -> list[str]:
        client = EngineClient(f"http://127.0.0.1:{free_port()},{quick_engine.url}", timeout=5.0)
        try:
            replies = [await client.ask("s", "hello", "en") for _ in range(4)]
            return [str(reply.responses[0]["custom"]["message"]) for reply in replies]
        finally:
            await client.close()

    assert asyncio.run(ask()) == ["greet_reply"] * 4
    assert quick_engine.asked == 4


def test_a_worker_that_loses_a_delivery_claim_leaves_the_winners_claim_alone(
    run_workers: Callable[[Scenario], None], fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    """Two workers pick the same due reply; the other one claims it between our read and our claim.
    We must neither send it nor hand the other worker's claim back (it would then be sent twice)."""
    from sqlalchemy import event, update

    from bot.db.models import utcnow

    async def scenario(_: Assistant, worker: Assistant) -> None:
        user = f"U{uuid.uuid4().hex}"
        fake_line.expire_reply_tokens()
        fake_line.fail("/v2/bot/message/push", 500, {"message": "try again"})
        first, _ = worker.store_inbound(inbound(user, "hello"))
        await worker.respond(first)
        with worker.sessions() as session:
            reply = session.scalar(select(Message.id).where(Message.in_reply_to == first))
            session.execute(update(Message).where(Message.id == reply).values(next_attempt_at=utcnow()))
            session.commit()
        bind = worker.sessions.kw["bind"]
        done: list[bool] = []

        def the_other_worker_claims_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if not done and re.match(r"\s*UPDATE messages SET status=\S+, claimed_at=", statement):
                done.append(True)
                other = bind.connect()
                other.execute(update(Message).where(Message.id == reply)
                              .values(status="delivering", claimed_at=utcnow()))
                other.commit()
                other.close()

        event.listen(bind, "before_cursor_execute", the_other_worker_claims_first)
        pushes = len(fake_line.calls_to("/v2/bot/message/push"))
        assert await worker.retry_deliveries() == 0
        event.remove(bind, "before_cursor_execute", the_other_worker_claims_first)
        assert done, "the claim was raced"
        assert len(fake_line.calls_to("/v2/bot/message/push")) == pushes  # not sent by the loser
        with worker.sessions() as session:
            assert session.scalar(select(Message.status).where(Message.id == reply)) == "delivering"

    run_workers(scenario)


def test_a_busy_worker_leaves_new_messages_to_the_background_loop_and_answers_them_in_order(
    run_workers: Callable[[Scenario], None], slow_engine: ScriptedEngine, fake_line: FakeLine, kb: KnowledgeBase
) -> None:
    """Beyond ``max_in_flight`` a webhook's message is not answered on the spot (the event loop stays
    free to store and acknowledge webhooks); the background loop answers it, once, in order."""

    async def scenario(busy: Assistant, _: Assistant) -> None:
        slow_engine.delay = 1.0
        busy.max_in_flight = 1
        first_user, second_user = f"U{uuid.uuid4().hex}", f"U{uuid.uuid4().hex}"
        first, _ = busy.store_inbound(inbound(first_user))
        answering = asyncio.create_task(busy.respond(first))
        while not slow_engine.asked:
            await asyncio.sleep(0.01)
        second, _ = busy.store_inbound(inbound(second_user, "hello"))
        third, _ = busy.store_inbound(inbound(second_user, "good morning"))
        assert await busy.respond(second) == [] and await busy.respond(third) == []  # at once: left for the loop
        assert statuses(busy)[second] == "received" and statuses(busy)[third] == "received"
        assert await answering
        await asyncio.sleep(1.1)  # the loop takes messages received over a second ago
        assert await busy.retry_waiting() == 2
        assert statuses(busy) == {first: "answered", second: "answered", third: "answered"}
        assert [m["text"] for m in fake_line.delivered(second_user)] == [kb.message("greet_reply", "en")] * 2
        with busy.sessions() as session:
            order = session.scalars(select(Message.in_reply_to).where(Message.in_reply_to.in_((second, third)))
                                    .order_by(Message.id)).all()
        assert order == [second, third]

    run_workers(scenario)
