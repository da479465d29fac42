"""The console's disaster pages: alerts (compose, preview, send, live progress, delivery report),
the safety check-in dashboard and the disaster-mode switch.

Every signed-in staff member may send an alert and switch disaster mode: at night one person is
on call. Sending always goes through a preview of every language the recipients read, and both
actions are written to the audit log. The pages call :class:`bot.broadcast.BroadcastService`, the
same service as ``python -m bot alert``; delivery is the app's broadcast worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import func, select

from bot.alerts import AlertTemplate
from bot.broadcast import DISASTER_MODE, AlertError, AlertRefused, BroadcastService, UnknownAreas, set_disaster_mode
from bot.checkin import checkin_counts
from bot.db.models import Broadcast, Switch, User
from bot.languages import LANGUAGES
from bot.web.console import Console, ConsoleProblem

FIELD_LABELS = {"area": "地域", "time": "日時", "name": "避難所の名前", "address": "住所", "map_url": "地図のURL",
                "place": "場所"}
FIELD_HINTS = {"area": "例: 宮古市沿岸部", "time": "例: 12月5日 2時10分", "name": "例: 宮古市民文化会館",
               "address": "例: 宮古市…", "map_url": "https://…", "place": "例: 宮古市役所 駐車場"}
PLATFORMS = {"line": "LINE", "telegram": "Telegram"}
BROADCAST_STATUSES = {"queued": "送信待ち", "sending": "送信中", "done": "完了", "refused": "送信せず"}
DELIVERY_STATUSES = {"sent": "送信済み", "queued": "送信待ち", "failed": "失敗", "blocked": "ブロック・退会",
                     "uncertain": "不明（再送せず）"}
MAX_FIELD = 300


@dataclass
class AlertForm:
    """What staff filled in: template, fields, staff note and the targeting."""

    template: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    free_text: str = ""
    areas: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)

    def hidden(self) -> list[tuple[str, str]]:
        """The form as hidden inputs (the preview's "send" carries exactly what was previewed)."""
        pairs = [("template", self.template), ("free_text", self.free_text), ("areas", "\n".join(self.areas))]
        pairs += [(f"field_{name}", value) for name, value in self.fields.items()]
        pairs += [("language", code) for code in self.languages]
        pairs += [("platform", code) for code in self.platforms]
        return pairs

    def query(self) -> str:
        return urlencode(self.hidden())


def split_areas(text: str) -> list[str]:
    """Areas as typed: one per line or separated by commas (、 too); blanks dropped, order kept."""
    parts = [part.strip() for chunk in text.replace("、", ",").replace("，", ",").splitlines()
             for part in chunk.split(",")]
    return list(dict.fromkeys(part for part in parts if part))


class AlertPages:
    """The pages; ``console`` gives sign-in, CSRF, rendering and the error page."""

    def __init__(self, console: Console, service: BroadcastService) -> None:
        self.console = console
        self.service = service
        self.sessions = service.sessions
        self.language_labels = dict(console.helpdesk.language_choices())

    # ------------------------------------------------------------------ helpers

    def _spec(self, name: str) -> AlertTemplate:
        spec = self.service.alert_templates.get(name)
        if spec is None:
            raise ConsoleProblem(400, f"テンプレート「{name}」はありません。")
        return spec

    def known_areas(self) -> dict[str, int]:
        """How many users gave each area (the targeting choices show it)."""
        with self.sessions() as session:
            rows = session.execute(
                select(User.area, func.count()).where(User.area.is_not(None), User.area != "")
                .group_by(User.area).order_by(func.count().desc(), User.area).limit(500)
            ).all()
        return {str(area): int(count) for area, count in rows}

    def area_choices(self) -> list[tuple[str, str, int]]:
        """``(name, romaji, users)`` per municipality of the region, else per area users gave."""
        counts = self.known_areas()
        listed = self.service.areas.municipalities
        if listed:
            return [(m.name, m.romaji, counts.get(m.name, 0)) for m in listed]
        return [(area, "", count) for area, count in counts.items()]

    def read_form(self, values: Mapping[str, str], many: Mapping[str, Sequence[str]]) -> AlertForm:
        """The alert form from a request; a bad value is a 400 with the reason in Japanese."""
        spec = self._spec(values.get("template", ""))
        fields = {name: values.get(f"field_{name}", "").strip() for name in spec.fields}
        missing = [FIELD_LABELS.get(name, name) for name, value in fields.items() if not value]
        if missing:
            raise ConsoleProblem(400, f"入力してください: {'、'.join(missing)}")
        too_long = [FIELD_LABELS.get(name, name) for name, value in fields.items() if len(value) > MAX_FIELD]
        if too_long:
            raise ConsoleProblem(400, f"{'、'.join(too_long)} は{MAX_FIELD}文字以内で入力してください。")
        if "map_url" in fields and not fields["map_url"].startswith(("https://", "http://")):
            raise ConsoleProblem(400, "地図のURLは https:// で始めてください。")
        languages = list(dict.fromkeys(many.get("language", ())))
        unknown = [code for code in languages if code not in LANGUAGES]
        if unknown:
            raise ConsoleProblem(400, f"言語 {', '.join(unknown)} はありません。")
        platforms = list(dict.fromkeys(many.get("platform", ())))
        unusable = [p for p in platforms if p not in self.service.senders]
        if unusable:
            raise ConsoleProblem(400, f"{', '.join(unusable)} は設定されていないため送信できません。")
        typed = split_areas(values.get("areas", "")) + [a for a in many.get("area", ()) if a.strip()]
        try:
            areas = self.service.municipalities(typed)
        except UnknownAreas as exc:
            raise ConsoleProblem(400, f"地域「{'、'.join(exc.areas)}」は市町村の一覧にありません。") from None
        return AlertForm(spec.name, fields, values.get("free_text", "").strip(), areas, languages, platforms)

    async def _posted_form(self, request: Request) -> tuple[Any, AlertForm]:
        visit, values = await self.console.posted(request)
        if not self.service.senders:
            raise ConsoleProblem(400, "LINE も Telegram も設定されていないため、一斉送信はできません。")
        form = await request.form()
        many = {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in ("language", "platform", "area")}
        return visit, self.read_form(values, many)

    def audience(self, form: AlertForm) -> dict[str, Any]:
        """Who would receive it: counts per platform and language."""
        people = self.service.recipients(form.areas, form.languages, form.platforms)
        by: dict[str, dict[str, int]] = {}
        for person in people:
            cell = by.setdefault(person.platform, {})
            cell[person.language] = cell.get(person.language, 0) + 1
        return {"total": len(people), "by_platform": by,
                "languages": sorted({p.language for p in people}, key=LANGUAGES.index)}

    def disaster_switch(self) -> Switch | None:
        with self.sessions() as session:
            return session.get(Switch, DISASTER_MODE)

    # ------------------------------------------------------------------ pages

    async def index(self, request: Request) -> Response:
        visit, _ = self.console.signed_in(request)
        quota = await self._quota()
        return self.console.page(visit, "alerts.html", nav="alerts", alerts=self.service.alerts(100),
                                 templates=self.service.templates("ja"), switch=self.disaster_switch(),
                                 quota=quota, platforms={p: PLATFORMS.get(p, p) for p in self.service.senders},
                                 BROADCAST_STATUSES=BROADCAST_STATUSES)

    async def _quota(self) -> Any:
        try:
            return await asyncio.wait_for(self.service.line_quota(), 10)
        except Exception:  # the page still opens when LINE does not answer; the send checks again
            return "unavailable"

    async def compose(self, request: Request) -> Response:
        visit, _ = self.console.signed_in(request)
        params = request.query_params
        spec = self._spec(params.get("template", ""))
        form = AlertForm(spec.name, {name: params.get(f"field_{name}", "") for name in spec.fields},
                         params.get("free_text", ""), split_areas(params.get("areas", "")) + params.getlist("area"),
                         params.getlist("language"), params.getlist("platform"))
        return self.console.page(
            visit, "alert_new.html", nav="alerts", spec=spec, form=form,
            labels=FIELD_LABELS, hints=FIELD_HINTS, area_choices=self.area_choices(), languages=self.language_labels,
            platforms={p: PLATFORMS.get(p, p) for p in self.service.senders}, quota=await self._quota(),
        )

    async def preview(self, request: Request) -> Response:
        visit, form = await self._posted_form(request)
        audience = await asyncio.to_thread(self.audience, form)
        shown = audience["languages"] or list(LANGUAGES)
        try:
            texts = await self.service.preview(form.template, form.fields, form.free_text, shown)
        except AlertError as exc:
            raise ConsoleProblem(400, str(exc)) from None
        return self.console.page(
            visit, "alert_preview.html", nav="alerts", form=form, spec=self._spec(form.template),
            texts=texts, audience=audience, languages=self.language_labels, labels=FIELD_LABELS,
            platforms=PLATFORMS, quota=await self._quota(), back=f"/console/alerts/new?{form.query()}",
        )

    async def send(self, request: Request) -> Response:
        visit, form = await self._posted_form(request)
        assert visit.staff is not None
        try:
            alert_id = await self.service.create_alert(
                form.template, form.fields, free_text=form.free_text, areas=form.areas, languages=form.languages,
                platforms=form.platforms, created_by=visit.staff.login,
            )
        except AlertRefused as exc:
            self.console.record(visit.staff, "alert_refused", ("broadcast", exc.broadcast_id),
                                {"template": form.template})
            return self.console.redirect(visit, f"/console/alerts/{exc.broadcast_id}",
                                         f"送信しませんでした（LINE の今月の送信可能数が足りません）: {exc}")
        except AlertError as exc:
            raise ConsoleProblem(400, str(exc)) from None
        self.console.record(visit.staff, "alert_sent", ("broadcast", alert_id),
                            {"template": form.template, "areas": form.areas, "languages": form.languages,
                             "platforms": form.platforms})
        return self.console.redirect(visit, f"/console/alerts/{alert_id}", "送信を開始しました。")

    def _progress(self, alert_id: int) -> dict[str, Any]:
        try:
            progress = self.service.report(alert_id)
        except AlertError:
            raise ConsoleProblem(404, f"お知らせ {alert_id} はありません。") from None
        totals = progress["totals"]
        total = sum(totals.values())
        finished = total - totals.get("queued", 0)
        progress["total"] = total
        progress["finished"] = finished
        progress["percent"] = 100 if not total else round(100 * finished / total)
        return progress

    def show(self, request: Request, alert_id: int) -> Response:
        visit, _ = self.console.signed_in(request)
        progress = self._progress(alert_id)
        spec = self.service.alert_templates.get(progress["template"])
        checkin = checkin_counts(self.sessions, alert_id) if spec is not None and spec.checkin else None
        texts = self._texts(alert_id)
        return self.console.page(
            visit, "alert.html", nav="alerts", alert=progress, spec=spec, checkin=checkin, texts=texts,
            languages=self.language_labels, labels=FIELD_LABELS, platforms=PLATFORMS,
            BROADCAST_STATUSES=BROADCAST_STATUSES, DELIVERY_STATUSES=DELIVERY_STATUSES,
        )

    def _texts(self, alert_id: int) -> dict[str, str]:
        with self.sessions() as session:
            broadcast = session.get(Broadcast, alert_id)
            return dict(broadcast.texts or {}) if broadcast is not None else {}

    def progress_json(self, request: Request, alert_id: int) -> Response:
        """What the alert page polls while the alert goes out."""
        visit, _ = self.console.signed_in(request)
        progress = self._progress(alert_id)
        spec = self.service.alert_templates.get(progress["template"])
        if spec is not None and spec.checkin:
            progress["checkin"] = checkin_counts(self.sessions, alert_id)
        keep = ("id", "status", "detail", "totals", "by_platform", "total", "finished", "percent", "checkin")
        return self.console.finish(JSONResponse({k: progress[k] for k in keep if k in progress}), visit.session)

    async def disaster_mode(self, request: Request) -> Response:
        visit, values = await self.console.posted(request)
        assert visit.staff is not None
        state = values.get("state", "")
        if state not in ("on", "off"):
            raise ConsoleProblem(400, "state は on か off です。")
        await asyncio.to_thread(set_disaster_mode, self.sessions, state == "on", visit.staff.login)
        self.console.record(visit.staff, "disaster_mode_on" if state == "on" else "disaster_mode_off")
        note = ("災害モードを開始しました。利用者への案内が災害時の内容に変わります。" if state == "on"
                else "災害モードを終了しました。")
        return self.console.redirect(visit, "/console/alerts", note)


def install(app: FastAPI, console: Console, service: BroadcastService) -> AlertPages:
    """Mount the alert pages under ``/console`` (the console's sign-in, CSRF and error pages apply)."""
    pages = AlertPages(console, service)
    router = APIRouter(prefix="/console", include_in_schema=False)
    get, post = router.get, router.post
    get("/alerts", response_class=HTMLResponse)(pages.index)
    get("/alerts/new", response_class=HTMLResponse)(pages.compose)
    post("/alerts/preview")(pages.preview)
    post("/alerts")(pages.send)

    @get("/alerts/{alert_id}", response_class=HTMLResponse)
    def alert_page(request: Request, alert_id: int) -> Response:
        return pages.show(request, alert_id)

    @get("/alerts/{alert_id}/progress")
    def alert_progress(request: Request, alert_id: int) -> Response:
        return pages.progress_json(request, alert_id)

    post("/disaster-mode")(pages.disaster_mode)
    app.include_router(router)
    return pages
