"""The engine's own thin input channel.

Like Rasa's REST channel, but the answer also carries what the classifier saw (intent,
ranking, the FAQ ranking), so the app can offer the best two or three answers as buttons
on a fallback without asking Rasa twice. The language travels as message metadata.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional

from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

RANKING_LENGTH = 5


def summarise_parse(parse_data: Dict[str, Any]) -> Dict[str, Any]:
    """Keep only what the app needs from Rasa's parse data."""
    intent = parse_data.get("intent") or {}
    ranking = [
        {"name": item.get("name"), "confidence": float(item.get("confidence") or 0.0)}
        for item in (parse_data.get("intent_ranking") or [])[:RANKING_LENGTH]
    ]
    selector = (parse_data.get("response_selector") or {}).get("faq") or {}
    faq_ranking = [
        {"key": item.get("intent_response_key"), "confidence": float(item.get("confidence") or 0.0)}
        for item in (selector.get("ranking") or [])[:RANKING_LENGTH]
    ]
    return {
        "intent": {"name": intent.get("name"), "confidence": float(intent.get("confidence") or 0.0)},
        "intent_ranking": ranking,
        "faq_ranking": faq_ranking,
    }


class ConsultInput(InputChannel):
    """``POST /webhooks/consult/webhook`` with ``{"sender", "message", "metadata"}``."""

    @classmethod
    def name(cls) -> str:
        return "consult"

    def blueprint(
        self, on_new_message: Callable[[UserMessage], Awaitable[Any]]
    ) -> Blueprint:
        hook = Blueprint("consult_webhook", __name__)

        @hook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @hook.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            body = request.json or {}
            sender: Optional[str] = body.get("sender")
            text: Optional[str] = body.get("message")
            if not isinstance(sender, str) or not isinstance(text, str):
                return response.json({"error": "sender and message are required"}, status=400)
            metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            collector = CollectingOutputChannel()
            await on_new_message(
                UserMessage(text, collector, sender, input_channel=self.name(), metadata=metadata)
            )
            parse: Dict[str, Any] = {}
            agent = getattr(request.app.ctx, "agent", None)
            if agent is not None and agent.tracker_store is not None:
                tracker = await agent.tracker_store.retrieve(sender)
                if tracker is not None and tracker.latest_message is not None:
                    parse = summarise_parse(tracker.latest_message.parse_data)
            messages: List[Dict[str, Any]] = collector.messages
            return response.json({"messages": messages, "parse": parse})

        return hook
