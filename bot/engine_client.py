"""The app's side of the HTTP boundary to the Rasa engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """Rasa did not answer (down, starting, overloaded); the message waits and is retried."""


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
    def __init__(self, base_url: str, timeout: float) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, connect=2.0))

    async def ask(self, sender: str, text: str, language: str) -> EngineReply:
        try:
            response = await self._client.post(
                "/webhooks/consult/webhook",
                json={"sender": sender, "message": text, "metadata": {"language": language}},
            )
        except httpx.HTTPError as exc:
            log.warning("engine unreachable: %s", type(exc).__name__)
            raise EngineUnavailable(type(exc).__name__) from exc
        if response.status_code != 200:
            log.warning("engine answered HTTP %s", response.status_code)
            raise EngineUnavailable(f"HTTP {response.status_code}")
        body = response.json()
        return EngineReply(responses=list(body.get("messages") or []), parse=dict(body.get("parse") or {}))

    async def ready(self) -> bool:
        try:
            response = await self._client.get("/webhooks/consult/")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        await self._client.aclose()
