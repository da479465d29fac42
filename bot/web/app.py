"""Application factory. Nothing is built at import: ``create_app(settings)`` builds everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.db import make_engine, sessions, upgrade
from bot.engine_client import EngineClient
from bot.knowledge import KnowledgeBase
from bot.pipeline import Assistant
from bot.ports import Connector
from bot.safety import SafetyNet
from bot.settings import Settings
from connectors.rest import RestConnector
from connectors.rest import router as rest_router

log = logging.getLogger(__name__)
_PAGES = Path(__file__).with_name("templates")


class Channel(Protocol):
    """A platform plugged into the app: its connector (delivery) and its web routes (webhooks).

    The app knows channels only through this; ``connectors.channels(settings)`` builds the
    configured ones (the one place where the app learns which platforms exist).
    """

    @property
    def connector(self) -> Connector: ...

    def router(self, assistant: Assistant) -> APIRouter: ...

    async def start(self, assistant: Assistant) -> None:
        """Start background work (Telegram long polling); called once the app runs."""
        ...

    async def close(self) -> None:
        """Release the platform clients."""
        ...


def configured_channels(settings: Settings) -> list[Channel]:
    from connectors import channels

    return list(channels(settings))


def build_assistant(settings: Settings, connectors: Mapping[str, Connector] | None = None) -> Assistant:
    """Everything the pipeline needs, from settings. Migrates the database to the newest schema."""
    url = settings.resolved_database_url()
    upgrade(url)
    kb = KnowledgeBase.load(settings.knowledge_base)
    engine = EngineClient(settings.rasa_url, settings.rasa_timeout)
    all_connectors: dict[str, Connector] = {"rest": RestConnector()}
    all_connectors.update(connectors or {})
    return Assistant(
        kb=kb,
        sessions=sessions(make_engine(url)),
        engine=engine,
        safety=SafetyNet.load(),
        connectors=all_connectors,
        engine_message_chars=settings.engine_message_chars,
        claim_lease=settings.claim_lease_seconds,
    )


async def _retry_loop(assistant: Assistant, interval: float) -> None:
    while True:
        try:
            await assistant.retry_waiting()
            await assistant.retry_deliveries()
        except Exception:  # the worker must outlive any one failure
            log.exception("retry worker round failed")
        await asyncio.sleep(interval)


def create_app(
    settings: Settings, assistant: Assistant | None = None, channels: Sequence[Channel] | None = None
) -> FastAPI:
    """The app; ``channels`` default to the platforms configured in ``settings``."""
    channels = list(configured_channels(settings) if channels is None else channels)
    assistant = assistant or build_assistant(settings, {c.connector.platform: c.connector for c in channels})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(_retry_loop(assistant, settings.retry_interval))
        for channel in channels:
            await channel.start(assistant)
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            for channel in channels:
                await channel.close()
            await assistant.engine.close()
            bind = assistant.sessions.kw.get("bind")
            if bind is not None:
                bind.dispose()

    app = FastAPI(title="Consultation assistant", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.assistant = assistant
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": reasons or "invalid request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    app.include_router(rest_router(assistant))
    for channel in channels:
        app.include_router(channel.router(assistant))

    @app.get("/", response_class=HTMLResponse)
    async def web_chat() -> HTMLResponse:
        return HTMLResponse((_PAGES / "chat.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"app": "ok", "engine": "ok" if await assistant.engine.ready() else "unavailable"})

    return app
