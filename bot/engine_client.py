"""The app's side of the HTTP boundary to the Rasa engine (one server, or several for scale-out)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

DOWN_SECONDS = 5.0
"""An engine that refused a connection is skipped this long (unless every engine is down)."""
FAILOVER_STATUSES = frozenset({502, 503, 504})
IN_FLIGHT = 8
"""Questions sent to one engine at once; the rest queue here. Rasa answers one at a time anyway, and a
small pool keeps the HTTP client cheap (httpcore scans its whole queue on every request)."""


class EngineUnavailable(Exception):
    """No engine answered (down, starting, overloaded); the message waits and is retried."""


@dataclass(frozen=True)
class EngineReply:
    responses: list[dict[str, Any]]
    parse: dict[str, Any] = field(default_factory=dict)

    @property
    def intent(self) -> str | None:
        return (self.parse.get("intent") or {}).get("name")

    @property
    def confidence(self) -> float | None:
        return (self.parse.get("intent") or {}).get("confidence")


class EngineClient:
    """Asks one of several Rasa servers, in turn; the next one when a server cannot be reached.

    With several servers they share the tracker store (SQL) and the lock store (Redis), so any of
    them can answer any conversation (``endpoints-scale.yml``). A server that refuses connections
    is skipped for :data:`DOWN_SECONDS`. A read timeout is not retried elsewhere: that server may
    still be working on the message, which then waits (``waiting_engine``) and is asked again later.
    """

    def __init__(self, base_url: str | Sequence[str], timeout: float, in_flight: int = IN_FLIGHT) -> None:
        urls = [u.strip().rstrip("/") for u in base_url.split(",")] if isinstance(base_url, str) else list(base_url)
        self.urls = [url for url in urls if url]
        if not self.urls:
            raise ValueError("no engine URL")
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight, keepalive_expiry=30)
        self._clients = [
            httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=2.0), limits=limits)
            for url in self.urls
        ]
        self._slots = [asyncio.Semaphore(in_flight) for _ in self.urls]
        self._down_until = [0.0] * len(self.urls)
        self._turn = itertools.count()

    def _order(self) -> list[int]:
        start = next(self._turn) % len(self.urls)
        ring = [(start + i) % len(self.urls) for i in range(len(self.urls))]
        now = time.monotonic()
        return [i for i in ring if self._down_until[i] <= now] + [i for i in ring if self._down_until[i] > now]

    async def ask(self, sender: str, text: str, language: str) -> EngineReply:
        body = {"sender": sender, "message": text, "metadata": {"language": language}}
        problem = "no engine"
        for index in self._order():
            try:
                async with self._slots[index]:
                    response = await self._clients[index].post("/webhooks/consult/webhook", json=body)
            except httpx.ReadTimeout as exc:
                log.warning("engine %d timed out", index)
                raise EngineUnavailable("ReadTimeout") from exc
            except httpx.HTTPError as exc:
                log.warning("engine %d unreachable: %s", index, type(exc).__name__)
                self._down_until[index] = time.monotonic() + DOWN_SECONDS
                problem = type(exc).__name__
                continue
            if response.status_code in FAILOVER_STATUSES:
                log.warning("engine %d answered HTTP %s", index, response.status_code)
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                log.warning("engine %d answered HTTP %s", index, response.status_code)
                raise EngineUnavailable(f"HTTP {response.status_code}")
            self._down_until[index] = 0.0
            data = response.json()
            return EngineReply(responses=list(data.get("messages") or []), parse=dict(data.get("parse") or {}))
        raise EngineUnavailable(problem)

    async def ready(self) -> bool:
        """True when at least one engine answers."""
        for client in self._clients:
            try:
                response = await client.get("/webhooks/consult/")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return True
        return False

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
