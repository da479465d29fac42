"""LINE alerts (line-bot-sdk 3): multicast up to 500 users a request, push for one, quota checks.

Every request carries the job's ``X-Line-Retry-Key``: LINE accepts a key once and answers a
repeat with 409, so a retried job (after a 5xx, a timeout or a worker restart) never shows the
alert twice. LINE's multicast does not say which recipients blocked the account (it skips them);
a push to one user does (403).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiohttp
from linebot.v3.messaging import MulticastRequest, PushMessageRequest
from linebot.v3.messaging.exceptions import ApiException

from bot.broadcast import Quota, SendResult
from bot.ports import Reply
from connectors.line import LineConnector, _retry_after, to_line_message

log = logging.getLogger(__name__)

MULTICAST_MAX = 500


class LineBroadcaster:
    """The LINE side of :class:`bot.broadcast.BroadcastSender`."""

    platform = "line"
    batch_size = MULTICAST_MAX

    def __init__(self, connector: LineConnector, concurrency: int = 4) -> None:
        self.connector = connector
        self.concurrency = concurrency

    async def send(self, addresses: Sequence[str], reply: Reply, retry_key: str) -> SendResult:
        api = self.connector.api()
        message = to_line_message(reply)
        timeout = aiohttp.ClientTimeout(total=self.connector._timeout)
        try:
            if len(addresses) == 1:
                await api.push_message(PushMessageRequest(to=addresses[0], messages=[message]),
                                       x_line_retry_key=retry_key, _request_timeout=timeout)
            else:
                await api.multicast(MulticastRequest(to=list(addresses), messages=[message]),
                                    x_line_retry_key=retry_key, _request_timeout=timeout)
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 409:  # this retry key was accepted before: the users have the alert
                return SendResult("sent", "accepted earlier (retry key)")
            if status == 429 or status >= 500 or status == 0:
                return SendResult("retry", f"LINE HTTP {status}", _retry_after(exc))
            if status == 403 and len(addresses) == 1:
                return SendResult("blocked", "LINE 403: the user blocked the account")
            return SendResult("failed", f"LINE HTTP {status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendResult("retry", f"LINE {type(exc).__name__}")
        return SendResult("sent")

    async def quota(self) -> Quota:
        api = self.connector.api()
        timeout = aiohttp.ClientTimeout(total=self.connector._timeout)
        limit = await api.get_message_quota(_request_timeout=timeout)
        used = await api.get_message_quota_consumption(_request_timeout=timeout)
        value = int(limit.value) if limit.type == "limited" and limit.value is not None else None
        return Quota(limit=value, used=int(used.total_usage or 0))

    def batchable(self, address: str) -> bool:
        return address.startswith("U")  # user ids; groups (C...) and rooms (R...) get a push each

    async def close(self) -> None:
        await self.connector.close()
