"""The staff console: server-rendered Japanese pages over :class:`bot.helpdesk.HelpDesk`.

Every page needs a signed-in staff member (else a redirect to the login page, or 401 for a
POST); every POST checks the session's CSRF token (403 with the reason otherwise); admin pages
answer 403 to staff. Templates are Jinja2 with autoescape, so whatever a user wrote is shown as
text. ``install(app, settings)`` adds the routes, the static files and the error pages.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from bot import staff as staff_accounts
from bot.broadcast import is_disaster_mode
from bot.helpdesk import Forbidden, HelpDesk, HelpDeskError, NotFound, Preview, QueueFilter
from bot.settings import Settings
from bot.staff import StaffMember
from bot.web.security import COOKIE, ConsoleSession, SessionCodec, failed_logins_from, session_secret

log = logging.getLogger(__name__)
_WEB = Path(__file__).parent
STATUSES = {"open": "未対応", "assigned": "対応中", "waiting": "返信待ち", "resolved": "解決済み"}
ACTIVE = ("open", "assigned", "waiting")
REASONS = {"requested": "職員を希望", "fallback": "理解できず", "safety": "緊急", "feedback": "低評価",
           "staff": "職員が引き継ぎ", "checkin": "安否確認: 支援が必要"}
AGES: dict[str, tuple[str, QueueFilter]] = {
    "1h": ("1時間以上前", QueueFilter(older_than=dt.timedelta(hours=1))),
    "24h": ("24時間以上前", QueueFilter(older_than=dt.timedelta(hours=24))),
    "3d": ("3日以上前", QueueFilter(older_than=dt.timedelta(days=3))),
    "today": ("24時間以内", QueueFilter(newer_than=dt.timedelta(hours=24))),
}
ACTIONS = {"login": "ログイン", "logout": "ログアウト", "login_failed": "ログイン失敗",
           "account_locked": "アカウントロック", "alert_sent": "お知らせ送信", "alert_refused": "お知らせ送信せず",
           "disaster_mode_on": "災害モード開始", "disaster_mode_off": "災害モード終了"}
AGAIN = "ページを再読み込みしてからもう一度送信してください。"


class ConsoleProblem(Exception):
    """An error page: status, heading and the reason in Japanese."""

    def __init__(self, status: int, reason: str, heading: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.heading = heading or {400: "入力に誤りがあります", 401: "ログインが必要です", 403: "この操作はできません",
                                   404: "見つかりません", 429: "しばらくお待ちください"}.get(status, "エラー")


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass
class Visit:
    """One request's console context: the cookie session and the signed-in staff member."""

    request: Request
    session: ConsoleSession
    staff: StaffMember | None


class Console:
    """The console's pages; built once per app by :func:`install`."""

    def __init__(self, settings: Settings, helpdesk: HelpDesk) -> None:
        self.settings = settings
        self.helpdesk = helpdesk
        self.codec = SessionCodec(session_secret(settings), settings.console_session_hours * 3600,
                                  settings.console_secure_cookie)
        self.templates = Environment(loader=FileSystemLoader(_WEB / "templates"), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["jst"] = self._local_time
        self.templates.globals.update(STATUSES=STATUSES, REASONS=REASONS, ACTIONS=ACTIONS)
        self.zone = helpdesk.assistant.hours.zone
        kb = helpdesk.assistant.kb
        self.topic_titles = {entry_id: kb.title(entry_id, "ja") for entry_id in kb.entries}
        self.topic_choices: list[tuple[str, list[tuple[str, str]]]] = []
        """The topic filter's choices: knowledge-base entries by category (no query per page)."""
        for category in sorted({entry.category for entry in kb.entries.values()}):
            entries = sorted((e.id for e in kb.entries.values() if e.category == category),
                             key=lambda entry_id: self.topic_titles[entry_id])
            self.topic_choices.append((category, [(entry_id, self.topic_titles[entry_id]) for entry_id in entries]))

    # ------------------------------------------------------------------ plumbing

    def _local_time(self, value: dt.datetime | str | None, fmt: str = "%m/%d %H:%M") -> str:
        if not value:
            return ""
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(self.zone).strftime(fmt)

    def visit(self, request: Request) -> Visit:
        session = self.codec.load(request.cookies.get(COOKIE))
        staff = None
        if session.staff_id is not None:
            with self.helpdesk.assistant.sessions() as db:
                staff = staff_accounts.get_staff(db, session.staff_id)
            if staff is None:
                session.sign_out()
        request.state.console_session = session
        return Visit(request, session, staff)

    def signed_in(self, request: Request, *, admin: bool = False) -> tuple[Visit, StaffMember]:
        visit = self.visit(request)
        if visit.staff is None:
            if request.method == "GET":
                raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            raise ConsoleProblem(401, "ログインしてください。セッションの有効期限が切れた可能性があります。")
        if admin and not visit.staff.is_admin:
            raise ConsoleProblem(403, "このページは管理者だけが使えます。")
        return visit, visit.staff

    async def posted(
        self, request: Request, *, admin: bool = False, login: bool = True
    ) -> tuple[Visit, dict[str, str]]:
        """A form POST: signed in (unless ``login`` is False), CSRF token checked, fields as strings."""
        if login:
            visit, _ = self.signed_in(request, admin=admin)
        else:
            visit = self.visit(request)
        try:
            form = await request.form()
        except Exception as exc:  # a body that is not a form
            raise ConsoleProblem(400, "フォームを読み取れませんでした。") from exc
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        token = fields.get("csrf_token")
        if not token:
            raise ConsoleProblem(403, "CSRFトークンがありません。" + AGAIN)
        if not visit.session.csrf_ok(token):
            raise ConsoleProblem(403, "CSRFトークンが正しくありません。" + AGAIN)
        return visit, fields

    def finish(self, response: Response, session: ConsoleSession | None) -> Response:
        if session is not None and session.changed:
            response.set_cookie(value=self.codec.dump(session), **self.codec.cookie_args())
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def page(self, visit: Visit, template: str, status: int = 200, **values: Any) -> Response:
        html = self.templates.get_template(f"console/{template}").render(
            staff=visit.staff, csrf=visit.session.csrf, flash=visit.session.pop_flash(),
            disaster=visit.staff is not None and is_disaster_mode(self.helpdesk.assistant.sessions), **values
        )
        return self.finish(HTMLResponse(html, status_code=status), visit.session)

    def redirect(self, visit: Visit, to: str, flash: str = "") -> Response:
        if flash:
            visit.session.say(flash)
        return self.finish(RedirectResponse(to, status_code=303), visit.session)

    def problem_page(self, request: Request, problem: ConsoleProblem) -> Response:
        session: ConsoleSession | None = getattr(request.state, "console_session", None)
        if session is None:
            session = self.codec.load(request.cookies.get(COOKIE))
        staff = None
        if session.staff_id is not None and problem.status != 401:
            with self.helpdesk.assistant.sessions() as db:
                staff = staff_accounts.get_staff(db, session.staff_id)
        html = self.templates.get_template("console/error.html").render(
            staff=staff, csrf=session.csrf, flash="", status=problem.status, heading=problem.heading,
            reason=problem.reason, disaster=False,
        )
        return self.finish(HTMLResponse(html, status_code=problem.status), session)

    def record(self, staff: StaffMember | None, action: str, target: tuple[str, object] | None = None,
               detail: dict[str, Any] | None = None) -> None:
        self.helpdesk.record(staff, action, target, detail)

    # ------------------------------------------------------------------ login

    def login_form(self, request: Request, next: str = "") -> Response:
        visit = self.visit(request)
        if visit.staff is not None:
            return self.redirect(visit, safe_next(next))
        return self.page(visit, "login.html", next=safe_next(next), login="", error="")

    async def login(self, request: Request) -> Response:
        visit, form = await self.posted(request, login=False)
        address = (request.client.host if request.client else "") or "unknown"
        login, password, next_path = form.get("login", "").strip(), form.get("password", ""), form.get("next", "")
        if not login or not password:
            return self.page(visit, "login.html", 400, next=safe_next(next_path), login=login,
                             error="ログインIDとパスワードを入力してください。")
        result = await run_in_threadpool(self._check_login, address, login, password)  # argon2: off the loop
        if result.staff is None:
            self.record(None, "login_failed", ("address", address[:64]), {"reason": result.reason})
            if result.reason == "locked" and result.locked_until is not None:
                until = self._local_time(result.locked_until, "%H:%M")
                error = f"ログインの失敗が続いたため、このアカウントは {until} までロックされています。"
                status = 423
            elif result.reason == "inactive":
                error, status = "このアカウントは無効です。管理者に連絡してください。", 403
            else:
                error, status = "ログインIDまたはパスワードが違います。", 401
            return self.page(visit, "login.html", status, next=safe_next(next_path), login=login, error=error)
        visit.session.sign_in(result.staff.id)
        self.record(result.staff, "login")
        log.info("console login staff=%s", result.staff.id)
        return self.redirect(visit, safe_next(next_path))

    def _check_login(self, address: str, login: str, password: str) -> staff_accounts.LoginResult:
        window = dt.timedelta(minutes=self.settings.console_login_window_minutes)
        with self.helpdesk.assistant.sessions() as db:
            if failed_logins_from(db, address, window) >= self.settings.console_login_limit:
                log.warning("console login refused: too many failures from one address")
                raise ConsoleProblem(429, "このアドレスからのログイン失敗が多すぎます。"
                                          f"{self.settings.console_login_window_minutes}分ほど待ってからお試しください。")
            return staff_accounts.verify_password(db, login, password)

    async def logout(self, request: Request) -> Response:
        visit, _ = await self.posted(request)
        self.record(visit.staff, "logout")
        visit.session.sign_out()
        return self.redirect(visit, "/console/login", "ログアウトしました。")

    # ------------------------------------------------------------------ queue and case

    def queue(self, request: Request) -> Response:
        visit, staff = self.signed_in(request)
        params = request.query_params
        filters, chosen = parse_filters(params, staff, self.helpdesk)
        page = positive_int(params.get("page", "1"), "page")
        result = self.helpdesk.queue(filters, page=page, per_page=self.settings.console_page_size)
        query = {k: v for k, v in chosen.items() if v}
        return self.page(
            visit, "queue.html", nav="queue", result=result, chosen=chosen, ages=AGES,
            languages=self.helpdesk.language_choices(), topics=self.topic_choices, topic_titles=self.topic_titles,
            prev_url=f"?{urlencode({**query, 'page': page - 1})}" if page > 1 else "",
            next_url=f"?{urlencode({**query, 'page': page + 1})}" if page < result.pages else "",
        )

    def case(self, request: Request, case_id: int, preview: Preview | None = None, draft: str = "",
             translation: str = "", status: int = 200) -> Response:
        visit, _ = self.signed_in(request)
        view = self.helpdesk.case(case_id)
        with self.helpdesk.assistant.sessions() as db:
            colleagues = staff_accounts.list_staff(db)
        return self.page(visit, "case.html", status, nav="queue", case=view, canned=self.helpdesk.canned_replies(),
                         colleagues=colleagues, preview=preview, draft=draft,
                         translation=translation if translation else (preview.translation or "") if preview else "")

    async def take(self, request: Request, case_id: int) -> Response:
        visit, form = await self.posted(request)
        assert visit.staff is not None
        assignee = form.get("assignee", "")
        assignee_id = positive_int(assignee, "assignee") if assignee else None
        self.helpdesk.assign(case_id, visit.staff, assignee_id)
        return self.redirect(visit, f"/console/cases/{case_id}", "担当者を設定しました。")

    async def preview(self, request: Request, case_id: int) -> Response:
        _, form = await self.posted(request)
        text = form.get("text_ja", "").strip()
        if not text:
            raise ConsoleProblem(400, "返信（日本語）を入力してください。")
        preview = await self.helpdesk.preview(case_id, text)
        return self.case(request, case_id, preview=preview, draft=text)

    async def reply(self, request: Request, case_id: int) -> Response:
        visit, form = await self.posted(request)
        assert visit.staff is not None
        text = form.get("text_ja", "").strip()
        if not text:
            raise ConsoleProblem(400, "返信（日本語）を入力してください。")
        edited = form.get("translation", "").strip() or None
        result = await self.helpdesk.reply(case_id, visit.staff, text, edited)
        note = "返信を送信しました。" if result.delivered else "返信を保存しました。送信失敗のため自動で再送します。"
        return self.redirect(visit, f"/console/cases/{case_id}", note)

    async def hand_back(self, request: Request, case_id: int) -> Response:
        visit, _ = await self.posted(request)
        assert visit.staff is not None
        await self.helpdesk.hand_back(case_id, visit.staff)
        return self.redirect(visit, f"/console/cases/{case_id}", "アシスタントに戻しました。")

    async def resolve(self, request: Request, case_id: int) -> Response:
        visit, _ = await self.posted(request)
        assert visit.staff is not None
        await self.helpdesk.resolve(case_id, visit.staff)
        return self.redirect(visit, f"/console/cases/{case_id}", "解決済みにしました。")

    async def propose(self, request: Request, case_id: int) -> Response:
        visit, form = await self.posted(request)
        assert visit.staff is not None
        question, answer = form.get("question_ja", "").strip(), form.get("answer_ja", "").strip()
        if not question or not answer:
            raise ConsoleProblem(400, "質問と回答（日本語）の両方を入力してください。")
        self.helpdesk.propose_entry(case_id, visit.staff, question, answer)
        return self.redirect(visit, f"/console/cases/{case_id}", "知識ベースへの追加を提案しました。")

    # ------------------------------------------------------------------ canned replies

    def canned(self, request: Request) -> Response:
        visit, _ = self.signed_in(request)
        return self.page(visit, "canned.html", nav="canned", canned=self.helpdesk.canned_replies())

    async def canned_save(self, request: Request, canned_id: int | None = None) -> Response:
        visit, form = await self.posted(request, admin=True)
        assert visit.staff is not None
        title, text = form.get("title", "").strip(), form.get("text_ja", "").strip()
        if not title or not text:
            raise ConsoleProblem(400, "題名と本文の両方を入力してください。")
        if canned_id is None:
            self.helpdesk.create_canned(visit.staff, title, text)
        else:
            self.helpdesk.update_canned(visit.staff, canned_id, title, text)
        return self.redirect(visit, "/console/canned", "定型文を保存しました。")

    async def canned_delete(self, request: Request, canned_id: int) -> Response:
        visit, _ = await self.posted(request, admin=True)
        assert visit.staff is not None
        self.helpdesk.delete_canned(visit.staff, canned_id)
        return self.redirect(visit, "/console/canned", "定型文を削除しました。")

    # ------------------------------------------------------------------ admin

    def suggestions(self, request: Request) -> Response:
        visit, _ = self.signed_in(request, admin=True)
        status = request.query_params.get("status", "proposed")
        if status not in ("proposed", "accepted", "rejected", "all"):
            raise ConsoleProblem(400, f"状態 {status!r} はありません。")
        rows = self.helpdesk.suggestions(None if status == "all" else status)
        return self.page(visit, "suggestions.html", nav="suggestions", suggestions=rows, shown=status)

    async def suggestion_decide(self, request: Request, suggestion_id: int, accept: bool) -> Response:
        visit, _ = await self.posted(request, admin=True)
        assert visit.staff is not None
        if accept:
            path = await self.helpdesk.accept_suggestion(suggestion_id, visit.staff)
            return self.redirect(visit, "/console/suggestions", f"採用しました。下書き: {path.name}")
        self.helpdesk.reject_suggestion(suggestion_id, visit.staff)
        return self.redirect(visit, "/console/suggestions", "却下しました。")

    def audit(self, request: Request) -> Response:
        visit, _ = self.signed_in(request, admin=True)
        page = positive_int(request.query_params.get("page", "1"), "page")
        rows = self.helpdesk.audit_log(page=page, per_page=100)
        return self.page(visit, "audit.html", nav="audit", rows=rows, page=page,
                         prev_url=f"?page={page - 1}" if page > 1 else "",
                         next_url=f"?page={page + 1}" if len(rows) == 100 else "")

    def staff_list(self, request: Request, created: str = "") -> Response:
        visit, _ = self.signed_in(request, admin=True)
        with self.helpdesk.assistant.sessions() as db:
            members = staff_accounts.list_staff(db)
        return self.page(visit, "staff.html", nav="staff", members=members, created=created, error="")

    async def staff_create(self, request: Request) -> Response:
        visit, form = await self.posted(request, admin=True)
        member = await run_in_threadpool(self._create_staff, visit.staff, form)  # argon2: off the loop
        return self.redirect(visit, "/console/staff", f"{member.login} を作成しました。")

    def _create_staff(self, admin: StaffMember | None, form: dict[str, str]) -> StaffMember:
        role = form.get("role", "staff")
        with self.helpdesk.assistant.sessions() as db:
            try:
                member = staff_accounts.create_staff(db, form.get("login", ""), form.get("password", ""),
                                                     display_name=form.get("display_name", ""), role=role)
            except staff_accounts.StaffError as exc:
                raise ConsoleProblem(400, f"アカウントを作成できません: {exc}") from None
            staff_accounts.audit(db, admin.id if admin else None, "staff_created", ("staff", member.id), {"role": role})
            db.commit()
        return member

    def token_page(self, request: Request) -> Response:
        visit, _ = self.signed_in(request)
        return self.page(visit, "token.html", nav="token", token="")

    async def token_create(self, request: Request) -> Response:
        visit, form = await self.posted(request)
        assert visit.staff is not None
        with self.helpdesk.assistant.sessions() as db:
            token = staff_accounts.create_token(db, visit.staff.id, form.get("label", "")[:128])
            staff_accounts.audit(db, visit.staff.id, "token_created", ("staff", visit.staff.id))
            db.commit()
        return self.page(visit, "token.html", nav="token", token=token)


def safe_next(path: str) -> str:
    """Only a path inside the console (no open redirect)."""
    if path.startswith("/console/") and not path.startswith("//") and "\\" not in path and path != "/console/login":
        return path
    return "/console/queue"


def positive_int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConsoleProblem(400, f"{name} は正の整数で指定してください。") from None
    if number < 1 or number > 10**9:
        raise ConsoleProblem(400, f"{name} は正の整数で指定してください。")
    return number


def parse_filters(
    params: Mapping[str, str], staff: StaffMember, helpdesk: HelpDesk
) -> tuple[QueueFilter, dict[str, str]]:
    """The queue's filters from a query string; a bad value is a 400 with the reason."""
    chosen = {key: params.get(key, "") for key in ("status", "language", "topic", "urgent", "age", "mine")}
    status = chosen["status"]
    if status in ("", "active"):
        statuses: tuple[str, ...] = ACTIVE
    elif status == "all":
        statuses = tuple(STATUSES)
    elif status in STATUSES:
        statuses = (status,)
    else:
        raise ConsoleProblem(400, f"状態 {status!r} はありません（{', '.join(STATUSES)}, active, all）。")
    language = chosen["language"] or None
    if language is not None and language not in dict(helpdesk.language_choices()):
        raise ConsoleProblem(400, f"言語 {language!r} はありません。")
    urgent = {"": None, "1": True, "0": False}.get(chosen["urgent"], "bad")
    if urgent == "bad":
        raise ConsoleProblem(400, "緊急の指定は 1 または 0 です。")
    age = chosen["age"]
    if age and age not in AGES:
        raise ConsoleProblem(400, f"経過時間 {age!r} はありません（{', '.join(AGES)}）。")
    aged = AGES[age][1] if age else QueueFilter()
    filters = QueueFilter(
        status=statuses, language=language, topic=chosen["topic"] or None,
        urgent=urgent if isinstance(urgent, bool) else None,
        older_than=aged.older_than, newer_than=aged.newer_than,
        assignee_id=staff.id if chosen["mine"] == "1" else None,
    )
    return filters, chosen


def install(app: FastAPI, settings: Settings, helpdesk: HelpDesk) -> Console:
    """Mount the console on ``app``: pages under ``/console``, CSS under ``/console/static``."""
    console = Console(settings, helpdesk)
    router = APIRouter(prefix="/console", include_in_schema=False)
    get, post = router.get, router.post

    @get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        visit, _ = console.signed_in(request)
        return console.redirect(visit, "/console/queue")

    get("/login", response_class=HTMLResponse)(console.login_form)
    post("/login")(console.login)
    post("/logout")(console.logout)
    get("/queue", response_class=HTMLResponse)(console.queue)

    @get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: int) -> Response:
        return console.case(request, case_id)

    post("/cases/{case_id}/take")(console.take)
    post("/cases/{case_id}/preview")(console.preview)
    post("/cases/{case_id}/reply")(console.reply)
    post("/cases/{case_id}/handback")(console.hand_back)
    post("/cases/{case_id}/resolve")(console.resolve)
    post("/cases/{case_id}/propose")(console.propose)
    get("/canned", response_class=HTMLResponse)(console.canned)

    @post("/canned")
    async def canned_create(request: Request) -> Response:
        return await console.canned_save(request)

    @post("/canned/{canned_id}")
    async def canned_update(request: Request, canned_id: int) -> Response:
        return await console.canned_save(request, canned_id)

    post("/canned/{canned_id}/delete")(console.canned_delete)
    get("/suggestions", response_class=HTMLResponse)(console.suggestions)

    @post("/suggestions/{suggestion_id}/accept")
    async def accept(request: Request, suggestion_id: int) -> Response:
        return await console.suggestion_decide(request, suggestion_id, True)

    @post("/suggestions/{suggestion_id}/reject")
    async def reject(request: Request, suggestion_id: int) -> Response:
        return await console.suggestion_decide(request, suggestion_id, False)

    get("/audit", response_class=HTMLResponse)(console.audit)

    @get("/staff", response_class=HTMLResponse)
    def staff_page(request: Request) -> Response:
        return console.staff_list(request)

    post("/staff")(console.staff_create)
    get("/token", response_class=HTMLResponse)(console.token_page)
    post("/token")(console.token_create)

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=_WEB / "static"), name="console-static")

    def console_only(request: Request) -> bool:
        return request.url.path.startswith("/console")

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleProblem)
        if not console_only(request):  # the API shares the filter parser
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        return console.problem_page(request, exc)

    async def on_login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        session = getattr(request.state, "console_session", None)
        response = RedirectResponse(f"/console/login?next={quote(exc.next_path, safe='')}", status_code=303)
        return console.finish(response, session)

    async def on_helpdesk_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HelpDeskError)
        status = 404 if isinstance(exc, NotFound) else 403 if isinstance(exc, Forbidden) else 400
        if console_only(request):
            return console.problem_page(request, ConsoleProblem(status, str(exc)))
        return JSONResponse({"error": str(exc)}, status_code=status)

    app.add_exception_handler(ConsoleProblem, on_problem)
    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(HelpDeskError, on_helpdesk_error)
    return console
