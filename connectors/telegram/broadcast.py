"""Telegram alerts (python-telegram-bot 22): one chat at a time, at most ``rate`` messages a second.

A token bucket shared by every send of the process keeps the bot under Telegram's overall limit
(about 30 messages a second); a ``RetryAfter`` puts that chat's job back for the time Telegram
asked; 403 (the user blocked the bot) is recorded and not retried. The Bot API has no retry key:
a job whose worker was killed between Telegram's answer and the database commit is sent again
after its lease (at most one repeat per job in flight at the kill).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.broadcast import Quota, SendResult
from bot.ports import Reply
from connectors.telegram import MAX_TEXT, TelegramConnector, keyboard, seconds


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` waits for one."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class TelegramBroadcaster:
    """The Telegram side of :class:`bot.broadcast.BroadcastSender`."""

    platform = "telegram"
    batch_size = 1

    def __init__(self, connector: TelegramConnector, rate: float = 30.0, concurrency: int | None = None) -> None:
        self.connector = connector
        self.bucket = TokenBucket(rate, burst=max(1.0, rate / 10))
        self.concurrency = concurrency or max(1, int(rate))

    async def send(self, addresses: Sequence[str], reply: Reply, retry_key: str) -> SendResult:
        text = reply.text if len(reply.text) <= MAX_TEXT else reply.text[: MAX_TEXT - 1] + "…"
        await self.bucket.take()
        try:
            bot = await self.connector.api()
            await bot.send_message(chat_id=int(addresses[0]), text=text, reply_markup=keyboard(reply))
        except RetryAfter as exc:
            return SendResult("retry", "Telegram flood control (429)", seconds(exc.retry_after))
        except Forbidden:
            return SendResult("blocked", "Telegram 403: the user blocked the bot")
        except BadRequest as exc:
            return SendResult("failed", f"Telegram bad request: {exc.message[:80]}")
        except (NetworkError, TelegramError) as exc:  # 5xx, timeouts
            return SendResult("retry", f"Telegram {type(exc).__name__}")
        return SendResult("sent")

    async def quota(self) -> Quota | None:
        return None

    def batchable(self, address: str) -> bool:
        return False

    async def close(self) -> None:
        await self.connector.close()
