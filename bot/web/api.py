"""The JSON API for staff tools: ``/api/v1/``, ``Authorization: Bearer <token>`` (``bot.staff`` tokens).

The same powers as the console, through the same service (:class:`bot.helpdesk.HelpDesk`):
list escalations (the queue's filters), read a case, preview a translation, reply, assign, hand
back, resolve. Errors are ``{"error": "<reason>"}`` with 400 (bad input), 401 (no or bad token),
403 (admin only) or 404; never a 500 for bad input.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bot import staff as staff_accounts
from bot.helpdesk import HelpDesk
from bot.settings import Settings
from bot.staff import StaffMember
from bot.web.console import parse_filters, positive_int

log = logging.getLogger(__name__)
MAX_PER_PAGE = 200


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ReplyText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_ja: str = Field(min_length=1, max_length=5000, description="The reply in Japanese.")


class ReplyBody(ReplyText):
    translation: str | None = Field(default=None, max_length=10000,
                                    description="The edited translation from a preview; omitted: translated now.")


class AssignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee_id: int | None = Field(default=None, ge=1, description="Omitted: the token's owner.")


def bearer(request: Request) -> StaffMember:
    """The staff member whose token authorises this call (401 otherwise)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "missing Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'")
    helpdesk: HelpDesk = request.app.state.helpdesk
    with helpdesk.assistant.sessions() as db:
        staff = staff_accounts.verify_token(db, token.strip())
    if staff is None:
        log.info("API call with an unknown or revoked token")
        raise ApiError(401, "unknown or revoked token")
    return staff


Staff = Annotated[StaffMember, Depends(bearer)]


def as_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return jsonable_encoder(value)


def router(helpdesk: HelpDesk, settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["staff API"])

    @api.get("/escalations")
    def list_escalations(request: Request, staff: Staff) -> JSONResponse:
        params = request.query_params
        filters, _ = parse_filters(params, staff, helpdesk)
        page = positive_int(params.get("page", "1"), "page")
        per_page = positive_int(params.get("per_page", str(settings.console_page_size)), "per_page")
        if per_page > MAX_PER_PAGE:
            raise ApiError(400, f"per_page must be at most {MAX_PER_PAGE}")
        result = helpdesk.queue(filters, page=page, per_page=per_page)
        return JSONResponse({"total": result.total, "page": result.page, "per_page": result.per_page,
                             "pages": result.pages, "escalations": as_json(list(result.rows))})

    @api.get("/escalations/{escalation_id}")
    def read_escalation(escalation_id: int, staff: Staff) -> JSONResponse:
        return JSONResponse(as_json(helpdesk.case(escalation_id)))

    @api.post("/escalations/{escalation_id}/preview")
    async def preview(escalation_id: int, body: ReplyText, staff: Staff) -> JSONResponse:
        return JSONResponse(as_json(await helpdesk.preview(escalation_id, body.text_ja.strip() or _empty())))

    @api.post("/escalations/{escalation_id}/reply")
    async def reply(escalation_id: int, body: ReplyBody, staff: Staff) -> JSONResponse:
        text = body.text_ja.strip() or _empty()
        result = await helpdesk.reply(escalation_id, staff, text, (body.translation or "").strip() or None)
        return JSONResponse(as_json(result))

    @api.post("/escalations/{escalation_id}/assign")
    def assign(escalation_id: int, staff: Staff, body: AssignBody | None = None) -> JSONResponse:
        helpdesk.assign(escalation_id, staff, body.assignee_id if body else None)
        return JSONResponse(as_json(helpdesk.case(escalation_id)))

    @api.post("/escalations/{escalation_id}/handback")
    async def hand_back(escalation_id: int, staff: Staff) -> JSONResponse:
        await helpdesk.hand_back(escalation_id, staff)
        return JSONResponse({"id": escalation_id, "status": "resolved", "handler": "bot"})

    @api.post("/escalations/{escalation_id}/resolve")
    async def resolve(escalation_id: int, staff: Staff) -> JSONResponse:
        await helpdesk.resolve(escalation_id, staff)
        return JSONResponse({"id": escalation_id, "status": "resolved"})

    @api.get("/canned-replies")
    def canned(staff: Staff) -> JSONResponse:
        return JSONResponse({"canned_replies": as_json(helpdesk.canned_replies())})

    return api


def _empty() -> str:
    raise ApiError(400, "text_ja: the reply is empty")


def install(app: FastAPI, settings: Settings, helpdesk: HelpDesk) -> None:
    """Add ``/api/v1`` to ``app``; API errors answer JSON (the console's own errors answer HTML)."""
    app.include_router(router(helpdesk, settings))

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)

    app.add_exception_handler(ApiError, on_api_error)
