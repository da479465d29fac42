"""Shared fixtures: the knowledge base, a real Rasa server, the app on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bot.__main__ import start_engine, stop_process
from bot.engine_build import model_path, train_if_needed
from bot.knowledge import KnowledgeBase
from bot.settings import PROJECT, Settings
from bot.translation import Translator
from bot.web.app import create_app
from tests.fakes import FakeLine, FakeTelegram

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(PROJECT / "knowledge_base")


class EngineProcess:
    """A real ``rasa run`` on the trained model, on its own port; can be stopped and restarted."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/webhooks/consult/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        settings = Settings(data_dir=self.data_dir, rasa_url=self.url)
        self.process = start_engine(settings, self.port, self.data_dir / "rasa.log")
        try:
            wait_until(self.ready, timeout=180, interval=0.5)
        except AssertionError:
            log = (self.data_dir / "rasa.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"Rasa did not start:\n{log}") from None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="session")
def engine(kb: KnowledgeBase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The trained model served by Rasa 3.6.21 (trains first if the inputs changed)."""
    train_if_needed(kb, PROJECT)
    assert model_path(PROJECT).exists()
    process = EngineProcess(tmp_path_factory.mktemp("engine"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def running_engine(engine: EngineProcess) -> EngineProcess:
    """The engine, restarted first if an earlier test stopped it."""
    if not engine.ready():
        engine.start()
    return engine


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sqlalchemy.Engine]:
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_ADMIN_URL}: {exc}")
    yield admin
    admin.dispose()


@pytest.fixture
def apps() -> Iterator[contextlib.ExitStack]:
    """The apps a test started; stopped before its database is dropped, whatever order fixtures came in."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, apps: contextlib.ExitStack) -> Iterator[str]:
    """A new, empty database: an SQLite file, or a fresh database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'consult.db'}"
        apps.close()
        return
    admin: sqlalchemy.Engine = request.getfixturevalue("postgres_admin")
    name = f"consult_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    apps.close()  # no app session may be running while the database goes away
    sqlalchemy.orm.close_all_sessions()
    with warnings.catch_warnings():  # connections of engines already dropped: collected here, not in a later test
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Chat:
    """A user of the REST channel, as a web-chat widget would be."""

    def __init__(self, client: TestClient, sender: str | None = None) -> None:
        self.client = client
        self.sender = sender or f"user-{uuid.uuid4().hex[:8]}"
        self.last_seen = 0

    def say(self, text: str, message_id: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"sender": self.sender, "message": text}
        if message_id:
            body["message_id"] = message_id
        response = self.client.post("/webhooks/rest/webhook", json=body)
        assert response.status_code == 200, response.text
        replies: list[dict[str, Any]] = response.json()
        self._seen(replies)
        return replies

    def later(self) -> list[dict[str, Any]]:
        response = self.client.get("/webhooks/rest/messages", params={"sender": self.sender, "after": self.last_seen})
        assert response.status_code == 200
        replies: list[dict[str, Any]] = response.json()
        self._seen(replies)
        return replies

    def _seen(self, replies: list[dict[str, Any]]) -> None:
        for reply in replies:
            self.last_seen = max(self.last_seen, int(reply.get("message_id") or 0))


@pytest.fixture
def make_client(tmp_path: Path, apps: contextlib.ExitStack) -> Iterator[Callable[..., TestClient]]:
    """Start the app (its lifespan and background worker included) against a database and engine URL."""

    def factory(database_url: str, rasa_url: str, **overrides: Any) -> TestClient:
        settings = Settings(
            data_dir=tmp_path / "data", database_url=database_url, rasa_url=rasa_url, retry_interval=0.2,
            rasa_timeout=30.0, **overrides,
        )
        client = TestClient(create_app(settings))
        return apps.enter_context(client)

    yield factory
    apps.close()


@pytest.fixture
def dead_engine_url() -> str:
    """An engine address where nothing listens: Rasa stopped."""
    return f"http://127.0.0.1:{free_port()}"


class LiveServer:
    """The app served by uvicorn on a real port, in a background thread."""

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30, interval=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(tmp_path: Path, apps: contextlib.ExitStack) -> Callable[..., LiveServer]:

    def factory(database_url: str, rasa_url: str) -> LiveServer:
        settings = Settings(data_dir=tmp_path / "live", database_url=database_url, rasa_url=rasa_url,
                            retry_interval=0.2)
        return apps.enter_context(LiveServer(create_app(settings)))

    yield factory  # type: ignore[misc]
    apps.close()


# ------------------------------------------------------------------ platform fakes


@pytest.fixture
def fake_line() -> Iterator[FakeLine]:
    """The LINE Messaging API on 127.0.0.1 (real HTTP), recording every call."""
    with FakeLine() as fake:
        yield fake


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """The Telegram Bot API on 127.0.0.1 (real HTTP), recording every call."""
    with FakeTelegram() as fake:
        yield fake


def line_settings(fake: FakeLine, **extra: Any) -> dict[str, Any]:
    return {
        "line_channel_secret": SecretStr(fake.channel_secret),
        "line_channel_access_token": SecretStr(fake.access_token),
        "line_api_url": fake.url,
        "line_data_api_url": fake.url,
        "line_timeout": 1.0,
        **extra,
    }


def telegram_settings(fake: FakeTelegram, **extra: Any) -> dict[str, Any]:
    return {
        "telegram_bot_token": SecretStr(fake.token),
        "telegram_secret_token": SecretStr("telegram-test-secret"),
        "telegram_api_url": fake.url,
        "telegram_timeout": 1.0,
        **extra,
    }


# ------------------------------------------------------------------ translation


@pytest.fixture(scope="session")
def argos_packages() -> Path:
    """The folder of the test ``.argosmodel`` files (``tests/argos_build.py``; cached under ``build/argos``)."""
    from tests.argos_build import build_packages

    return build_packages(log=False)


@pytest.fixture
def translator(tmp_path: Path, argos_packages: Path) -> Translator:
    """A Translator over a fresh packages folder with the test packages installed (ja<->en, vi<->en)."""
    translator = Translator(tmp_path / "argos")
    translator.install(sorted(argos_packages.glob("*.argosmodel")))
    return translator
