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
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.broadcast import BroadcastService, BroadcastWorker, FreeTextTranslator
from bot.db import make_engine, sessions, upgrade
from bot.engine_client import EngineClient
from bot.helpdesk import HelpDesk
from bot.knowledge import KnowledgeBase
from bot.pipeline import Assistant
from bot.ports import Connector
from bot.privacy import purge
from bot.ratelimit import DatabaseRateLimiter, RateLimiter, RedisRateLimiter
from bot.safety import SafetyNet
from bot.settings import Settings
from bot.translation import Translator
from bot.web.api import install as install_api
from bot.web.console import install as install_console
from bot.web.console_alerts import install as install_alert_pages
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


def build_broadcasts(
    settings: Settings, assistant: Assistant, translator: FreeTextTranslator | None = None
) -> tuple[BroadcastService, BroadcastWorker]:
    """The alert service (for the console and API) and its delivery worker, on the configured platforms."""
    from connectors.broadcast import broadcasters

    senders = broadcasters(settings)
    service = BroadcastService(assistant.kb, assistant.sessions, senders, translator=translator)
    return service, BroadcastWorker(assistant.kb, assistant.sessions, senders)


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
        limiter=rate_limiter(settings),
        claim_lease=settings.claim_lease_seconds,
        max_in_flight=settings.max_in_flight,
    )


def build_helpdesk(settings: Settings, assistant: Assistant) -> HelpDesk:
    """The staff-side service (``app.state.helpdesk``) over the same storage and connectors."""
    drafts = settings.kb_drafts_dir or settings.knowledge_base / "drafts"
    return HelpDesk(assistant, Translator.from_settings(settings), drafts)


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """Counters every worker shares: Redis when ``CONSULT_REDIS_URL`` is set, else the database."""
    if settings.rate_limit_per_minute <= 0:
        return None
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, settings.rate_limit_per_minute)
    return DatabaseRateLimiter(settings.rate_limit_per_minute)


async def _retry_loop(assistant: Assistant, helpdesk: HelpDesk, settings: Settings) -> None:
    purged_at = -float("inf")
    loop = asyncio.get_running_loop()
    while True:
        answered = 0
        try:
            answered = await assistant.retry_waiting()
            await assistant.retry_deliveries()
            await helpdesk.translate_pending()
            if settings.retention_days > 0 and loop.time() - purged_at >= settings.retention_check_seconds:
                purged_at = loop.time()
                with assistant.sessions() as session:
                    purge(session, settings.retention_days)
                    session.commit()
        except Exception:  # the worker must outlive any one failure
            log.exception("retry worker round failed")
        await asyncio.sleep(0 if answered else settings.retry_interval)  # a backlog (a burst) is worked through at once


def create_app(
    settings: Settings, assistant: Assistant | None = None, channels: Sequence[Channel] | None = None
) -> FastAPI:
    """The app; ``channels`` default to the platforms configured in ``settings``."""
    channels = list(configured_channels(settings) if channels is None else channels)
    assistant = assistant or build_assistant(settings, {c.connector.platform: c.connector for c in channels})
    helpdesk = build_helpdesk(settings, assistant)
    broadcasts, broadcast_worker = build_broadcasts(settings, assistant, helpdesk.translator)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if isinstance(helpdesk.translator, Translator) and helpdesk.translator.installed_pairs():
            helpdesk.translator.start()  # loads argostranslate in a thread, off the request path
        worker = asyncio.create_task(_retry_loop(assistant, helpdesk, settings))
        for channel in channels:
            await channel.start(assistant)
        alerts = asyncio.create_task(broadcast_worker.run()) if settings.broadcast_workers else None
        try:
            yield
        finally:
            assistant.stopping = True
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if alerts is not None:
                broadcast_worker.stop()  # sends in flight finish and are recorded
                await alerts
            for sender in broadcast_worker.senders.values():
                await sender.close()
            for channel in channels:
                await channel.close()
            await assistant.engine.close()
            close_limiter = getattr(assistant.limiter, "close", None)
            if close_limiter is not None:
                close_limiter()
            bind = assistant.sessions.kw.get("bind")
            if bind is not None:
                bind.dispose()

    app = FastAPI(title="Consultation assistant", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.assistant = assistant
    app.state.settings = settings
    app.state.helpdesk = helpdesk
    app.state.broadcasts = broadcasts

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": reasons or "invalid request"}, status_code=400)

    async def storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """The database is away (a restart, a failover): nothing was taken, so the platform sends again."""
        log.error("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"error": "the database is unavailable; nothing was stored, please send again shortly"},
                            status_code=503, headers={"Retry-After": "2"})

    app.add_exception_handler(OperationalError, storage_unavailable)
    app.add_exception_handler(InterfaceError, storage_unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    app.include_router(rest_router(assistant))
    for channel in channels:
        app.include_router(channel.router(assistant))
    console = install_console(app, settings, app.state.helpdesk)
    install_alert_pages(app, console, broadcasts)
    install_api(app, settings, app.state.helpdesk)

    @app.get("/", response_class=HTMLResponse)
    async def web_chat() -> HTMLResponse:
        return HTMLResponse((_PAGES / "chat.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"app": "ok", "engine": "ok" if await assistant.engine.ready() else "unavailable"})

    return app
