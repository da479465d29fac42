"""Disaster alerts: templates, targeting, rendering per language, durable delivery jobs, reports.

An alert is made from a reviewed template (``knowledge_base/alerts.yml``) and the fields staff
fill in (area, time, place...). :meth:`BroadcastService.create_alert` renders it once per
language, picks the recipients, checks LINE's monthly quota and stores one delivery job per
Telegram chat or LINE user and one per LINE multicast batch (up to 500 users). Workers
(:class:`BroadcastWorker`, started with the app or by ``python -m bot alert``) claim jobs with a
conditional UPDATE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and deliver them through a
:class:`BroadcastSender` per platform; the core knows no platform. Everything is in the
database, so a restart loses nothing: a claim whose worker died is given back after its lease,
and LINE drops a repeated request with the same ``X-Line-Retry-Key``.

These are the functions a console page or the JSON API calls: :meth:`BroadcastService.templates`,
:meth:`~BroadcastService.preview`, :meth:`~BroadcastService.create_alert`,
:meth:`~BroadcastService.progress`, :meth:`~BroadcastService.report`,
:meth:`~BroadcastService.line_quota`, :func:`is_disaster_mode`, :func:`set_disaster_mode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.alerts import AlertTemplate, load_alerts
from bot.areas import AreaDirectory
from bot.db.models import Broadcast, BroadcastDelivery, Identity, Switch, User, utcnow
from bot.knowledge import KnowledgeBase, fill
from bot.language_id import normalise_hint
from bot.languages import LANGUAGES
from bot.ports import Button, Reply

log = logging.getLogger(__name__)

FALLBACK_LANGUAGE = "ja-easy"
"""A user whose language we do not know reads the alert in easy Japanese."""
LINE_MULTICAST_MAX = 500
MAX_FREE_TEXT = 1000
MAX_ATTEMPTS = 10
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds before attempt 2, 3, ...; the platform's Retry-After wins when it is longer."""
LEASE_SECONDS = 120.0
LOOPS = 2
CHECKIN_PREFIX = "/checkin:"
DISASTER_MODE = "disaster_mode"


class AlertError(Exception):
    """The alert cannot be made as asked; the message says why (shown to staff)."""


class UnknownAreas(AlertError):
    """Target areas that are no municipality of the region (``areas``, as given)."""

    def __init__(self, reason: str, areas: list[str]) -> None:
        super().__init__(reason)
        self.areas = areas


class AlertRefused(AlertError):
    """The alert was stored but refused (e.g. LINE's monthly quota); ``broadcast_id`` has the reason."""

    def __init__(self, reason: str, broadcast_id: int) -> None:
        super().__init__(reason)
        self.broadcast_id = broadcast_id


# ---------------------------------------------------------------------------- seams


class Translated(Protocol):
    @property
    def text(self) -> str: ...


class FreeTextTranslator(Protocol):
    """Machine translation of staff free text (``bot.translation.Translator`` fits)."""

    def can_translate(self, source: str, target: str) -> bool: ...

    async def translate(self, text: str, source: str, target: str) -> Translated | None: ...


@dataclass(frozen=True)
class SendResult:
    """What became of one delivery job. ``outcome``: sent, retry, blocked or failed."""

    outcome: str
    detail: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class Quota:
    """LINE's monthly message quota: ``limit`` None when unlimited."""

    limit: int | None
    used: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


class BroadcastSender(Protocol):
    """What the broadcast core needs from a platform (``connectors/*/broadcast.py``)."""

    platform: str
    batch_size: int
    """Recipients per request (LINE multicast: 500; Telegram: 1)."""
    concurrency: int
    """Requests in flight at once."""

    async def send(self, addresses: Sequence[str], reply: Reply, retry_key: str) -> SendResult:
        """Deliver ``reply`` to every address; the same ``retry_key`` on every attempt of a job."""
        ...

    async def quota(self) -> Quota | None:
        """The platform's message quota, or None when it has none."""
        ...

    def batchable(self, address: str) -> bool:
        """Whether this address may share a request with others (a LINE group may not be multicast)."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------- disaster mode


def is_disaster_mode(sessions: sessionmaker[Session]) -> bool:
    """True while disaster mode is on (stored, so every worker sees the same)."""
    with sessions() as session:
        return disaster_mode_on(session)


def disaster_mode_on(session: Session) -> bool:
    """:func:`is_disaster_mode` inside an open session."""
    return bool(session.scalar(select(Switch.on).where(Switch.name == DISASTER_MODE)))


def set_disaster_mode(sessions: sessionmaker[Session], on: bool, by: str = "") -> None:
    with sessions() as session:
        switch = session.get(Switch, DISASTER_MODE)
        if switch is None:
            session.add(Switch(name=DISASTER_MODE, on=on, changed_by=by[:64], changed_at=utcnow()))
        else:
            switch.on = on
            switch.changed_by = by[:64]
            switch.changed_at = utcnow()
        session.commit()
    log.warning("disaster mode %s by=%s", "on" if on else "off", by or "-")


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Recipient:
    user_id: int
    platform: str
    address: str
    language: str
    area: str | None


def checkin_buttons(kb: KnowledgeBase, broadcast_id: int, language: str) -> tuple[Button, ...]:
    return (
        Button(kb.message("checkin_button_safe", language), f"{CHECKIN_PREFIX}{broadcast_id}:safe"),
        Button(kb.message("checkin_button_help", language), f"{CHECKIN_PREFIX}{broadcast_id}:help"),
    )


def user_language(user: User, identity: Identity) -> str:
    """The language an alert is sent in: chosen, else detected, else the platform's, else easy Japanese."""
    for candidate in (user.language, user.detected_language, normalise_hint(identity.language_hint)):
        if candidate in LANGUAGES:
            return str(candidate)
    return FALLBACK_LANGUAGE


class BroadcastService:
    """Alerts for staff: make, queue, follow and report. No platform is named here."""

    def __init__(
        self,
        kb: KnowledgeBase,
        sessions: sessionmaker[Session],
        senders: Mapping[str, BroadcastSender],
        templates: Mapping[str, AlertTemplate] | None = None,
        translator: FreeTextTranslator | None = None,
    ) -> None:
        self.kb = kb
        self.sessions = sessions
        self.senders = senders
        self.alert_templates = dict(templates if templates is not None else load_alerts(kb.root))
        self.translator = translator
        self.areas = AreaDirectory(kb.region)

    # ------------------------------------------------------------ what staff pick from

    def templates(self, language: str = "ja") -> list[dict[str, Any]]:
        """The templates with their title in ``language`` and the fields to fill."""
        return [
            {"name": t.name, "title": t.title.get(language) or t.title.get("en", t.name), "fields": list(t.fields),
             "checkin": t.checkin}
            for t in self.alert_templates.values()
        ]

    def _validate(self, template: str, fields: Mapping[str, str], free_text: str) -> AlertTemplate:
        spec = self.alert_templates.get(template)
        if spec is None:
            raise AlertError(f"unknown template {template!r}; choose one of {', '.join(self.alert_templates)}")
        missing = [name for name in spec.fields if not str(fields.get(name, "")).strip()]
        if missing:
            raise AlertError(f"template {template} needs the fields: {', '.join(missing)}")
        unknown = sorted(set(fields) - set(spec.fields))
        if unknown:
            raise AlertError(f"template {template} has no field {', '.join(unknown)}")
        if len(free_text) > MAX_FREE_TEXT:
            raise AlertError(f"the free text is longer than {MAX_FREE_TEXT} characters")
        return spec

    async def preview(
        self, template: str, fields: Mapping[str, str], free_text: str = "", languages: Sequence[str] = LANGUAGES
    ) -> dict[str, str]:
        """The alert as each language's readers will see it."""
        spec = self._validate(template, fields, free_text)
        texts, _ = await self._render_all(spec, fields, free_text, languages)
        return texts

    def render(self, spec: AlertTemplate, fields: Mapping[str, str], language: str) -> str:
        values = self.kb.region.placeholders(language)
        values.update({k: str(v) for k, v in fields.items()})
        template = spec.texts.get(language) or spec.texts[FALLBACK_LANGUAGE]
        return fill(template, values).strip()

    async def _render_all(
        self, spec: AlertTemplate, fields: Mapping[str, str], free_text: str, languages: Sequence[str]
    ) -> tuple[dict[str, str], list[str]]:
        texts: dict[str, str] = {}
        translated: list[str] = []
        note = free_text.strip()
        for language in languages:
            text = self.render(spec, fields, language)
            if note:
                addition, machine = await self._note(note, language)
                text = f"{text}\n\n{addition}"
                if machine:
                    translated.append(language)
            texts[language] = text
        return texts, translated

    async def _note(self, note: str, language: str) -> tuple[str, bool]:
        """Staff free text (written in Japanese) for ``language``; True when machine-translated."""
        untranslated = language in ("ja", "ja-easy")  # easy Japanese is written by people, not machines
        if self.translator is not None and not untranslated and self.translator.can_translate("ja", language):
            try:
                result = await self.translator.translate(note, "ja", language)
            except Exception as exc:  # a failed translation must not stop an alert
                log.warning("free-text translation to %s failed: %s", language, type(exc).__name__)
                result = None
            if result is not None and result.text.strip():
                return f"{self.kb.message('alert_note_translated', language)}\n{result.text.strip()}", True
        return f"{self.kb.message('alert_note_japanese', language)}\n{note}", False

    # ------------------------------------------------------------ targeting

    def recipients(
        self,
        areas: Sequence[str] = (),
        languages: Sequence[str] = (),
        platforms: Sequence[str] = (),
    ) -> list[Recipient]:
        """Subscribed users on a platform we can send to, filtered (an empty filter means everyone)."""
        usable = [p for p in (platforms or self.senders) if p in self.senders]
        wanted_areas = {a.strip().casefold() for a in areas if a.strip()}
        found: list[Recipient] = []
        with self.sessions() as session:
            query = (
                select(Identity, User)
                .join(User, User.id == Identity.user_id)
                .where(Identity.platform.in_(usable), Identity.unsubscribed.is_(False), User.subscribed.is_(True))
                .order_by(Identity.id)
            )
            if wanted_areas:
                query = query.where(func.lower(User.area).in_(wanted_areas))
            for identity, user in session.execute(query):
                language = user_language(user, identity)
                if languages and language not in languages:
                    continue
                found.append(Recipient(user.id, identity.platform, identity.platform_user_id, language, user.area))
        return found

    def municipalities(self, areas: Sequence[str]) -> list[str]:
        """Target areas as users' stored values (Morioka, 盛岡 → 盛岡市); an unknown one is refused,
        because it would silently reach nobody."""
        if not self.areas.municipalities:
            return [area for area in areas if area.strip()]
        names: list[str] = []
        unknown: list[str] = []
        for area in areas:
            if not area.strip():
                continue
            municipality = self.areas.find(area)
            if municipality is None:
                unknown.append(area)
            elif municipality.name not in names:
                names.append(municipality.name)
        if unknown:
            raise UnknownAreas(f"unknown area {', '.join(unknown)}; an area is a municipality of region.yml, "
                               f"e.g. {self.areas.municipalities[0].name}", unknown)
        return names

    # ------------------------------------------------------------ quota

    async def line_quota(self) -> Quota | None:
        """LINE's monthly quota and what is used of it (None without LINE)."""
        sender = self.senders.get("line")
        return await sender.quota() if sender is not None else None

    # ------------------------------------------------------------ create and queue

    async def create_alert(
        self,
        template: str,
        fields: Mapping[str, str],
        *,
        free_text: str = "",
        areas: Sequence[str] = (),
        languages: Sequence[str] = (),
        platforms: Sequence[str] = (),
        created_by: str = "",
    ) -> int:
        """Render, target, check the quota and queue; returns the alert id.

        Raises:
            AlertError: bad template, fields, area, language or platform (nothing stored).
            AlertRefused: stored as ``refused`` with the reason (LINE's quota would be exceeded).
        """
        spec = self._validate(template, fields, free_text)
        if not self.senders:
            raise AlertError("no platform to send on: set the LINE or Telegram secrets (README)")
        bad_languages = [lang for lang in languages if lang not in LANGUAGES]
        if bad_languages:
            raise AlertError(f"unknown language {', '.join(bad_languages)}; shipped: {', '.join(LANGUAGES)}")
        bad_platforms = [p for p in platforms if p not in self.senders]
        if bad_platforms:
            raise AlertError(f"no sender for platform {', '.join(bad_platforms)}; configured: "
                             f"{', '.join(self.senders) or 'none'}")
        areas = self.municipalities(areas)
        people = await asyncio.to_thread(self.recipients, areas, languages, platforms)
        used_languages = sorted({r.language for r in people} | {FALLBACK_LANGUAGE})
        texts, translated = await self._render_all(spec, fields, free_text, used_languages)
        target = {"areas": list(areas), "languages": list(languages), "platforms": list(platforms)}
        line_count = sum(1 for r in people if r.platform == "line")
        refusal = note = ""
        if line_count:
            quota = await self.line_quota()
            if quota is not None and quota.remaining is not None and quota.remaining < line_count:
                refusal = (f"LINE monthly quota: {quota.remaining} of {quota.limit} messages left, "
                           f"this alert needs {line_count}; nothing was sent")
            elif quota is not None:
                left = "no limit" if quota.limit is None else f"{quota.remaining} of {quota.limit} left"
                note = (f"LINE monthly quota before sending: {left} ({quota.used} used); "
                        f"this alert uses {line_count}")
        broadcast = Broadcast(
            template=template, fields=dict(fields), free_text=free_text, target=target, texts=texts,
            machine_translated=translated, status="refused" if refusal else "queued", detail=refusal or note,
            created_by=created_by[:64],
        )
        broadcast_id = await asyncio.to_thread(self._store, broadcast, people)
        log.warning("alert=%s template=%s recipients=%d status=%s", broadcast_id, template, len(people),
                    "refused" if refusal else "queued")
        if refusal:
            raise AlertRefused(refusal, broadcast_id)
        return broadcast_id

    def _store(self, broadcast: Broadcast, people: Sequence[Recipient]) -> int:
        """The alert and its delivery jobs, in one transaction."""
        refused = broadcast.status == "refused"
        with self.sessions() as session:
            session.add(broadcast)
            session.flush()
            if not refused:
                jobs = self._jobs(broadcast.id, people)
                if jobs:
                    session.execute(insert(BroadcastDelivery), jobs)
                else:
                    broadcast.status = "done"
                    broadcast.finished_at = utcnow()
            session.commit()
            return broadcast.id

    def _jobs(self, broadcast_id: int, people: Sequence[Recipient]) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str], list[Recipient]] = {}
        for person in people:
            groups.setdefault((person.platform, person.language), []).append(person)
        now = utcnow()
        jobs: list[dict[str, Any]] = []
        for (platform, language), members in sorted(groups.items()):
            size = max(1, self.senders[platform].batch_size)
            sender = self.senders[platform]
            alone = [m for m in members if not sender.batchable(m.address)]
            together = [m for m in members if sender.batchable(m.address)]
            chunks = [together[i : i + size] for i in range(0, len(together), size)] + [[m] for m in alone]
            for chunk in chunks:
                jobs.append({
                    "broadcast_id": broadcast_id, "platform": platform, "language": language,
                    "addresses": [m.address for m in chunk], "user_ids": [m.user_id for m in chunk],
                    "recipients": len(chunk), "status": "queued", "retry_key": str(uuid.uuid4()),
                    "attempts": 0, "next_attempt_at": now, "detail": "", "updated_at": now,
                })
        return jobs

    # ------------------------------------------------------------ progress and report

    def progress(self, broadcast_id: int) -> dict[str, Any]:
        """Recipients by status, per platform and language, while it goes out and after."""
        with self.sessions() as session:
            broadcast = session.get(Broadcast, broadcast_id)
            if broadcast is None:
                raise AlertError(f"no alert {broadcast_id}")
            rows = session.execute(
                select(BroadcastDelivery.platform, BroadcastDelivery.language, BroadcastDelivery.status,
                       func.sum(BroadcastDelivery.recipients))
                .where(BroadcastDelivery.broadcast_id == broadcast_id)
                .group_by(BroadcastDelivery.platform, BroadcastDelivery.language, BroadcastDelivery.status)
            ).all()
            status, detail = broadcast.status, broadcast.detail
        by: dict[str, dict[str, dict[str, int]]] = {}
        totals: dict[str, int] = {}
        for platform, language, state, count in rows:
            bucket = "queued" if state == "sending" else state
            cell = by.setdefault(platform, {}).setdefault(language, {})
            cell[bucket] = cell.get(bucket, 0) + int(count or 0)
            totals[bucket] = totals.get(bucket, 0) + int(count or 0)
        return {"id": broadcast_id, "status": status, "detail": detail, "totals": totals, "by_platform": by}

    def report(self, broadcast_id: int) -> dict[str, Any]:
        """The delivery report: progress plus why deliveries failed (reason → recipients)."""
        report = self.progress(broadcast_id)
        with self.sessions() as session:
            rows = session.execute(
                select(BroadcastDelivery.platform, BroadcastDelivery.status, BroadcastDelivery.detail,
                       func.sum(BroadcastDelivery.recipients))
                .where(BroadcastDelivery.broadcast_id == broadcast_id,
                       BroadcastDelivery.status.in_(("failed", "blocked")))
                .group_by(BroadcastDelivery.platform, BroadcastDelivery.status, BroadcastDelivery.detail)
            ).all()
            broadcast = session.get(Broadcast, broadcast_id)
            assert broadcast is not None
            report.update(template=broadcast.template, fields=broadcast.fields, created_by=broadcast.created_by,
                          machine_translated=broadcast.machine_translated,
                          created_at=broadcast.created_at.isoformat() if broadcast.created_at else None,
                          finished_at=broadcast.finished_at.isoformat() if broadcast.finished_at else None)
        report["failures"] = [
            {"platform": p, "status": s, "reason": d or s, "recipients": int(n or 0)} for p, s, d, n in rows
        ]
        return report

    def alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent alerts, newest first (for a console list)."""
        with self.sessions() as session:
            rows = session.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(limit)).all()
            return [{"id": b.id, "template": b.template, "status": b.status, "detail": b.detail,
                     "created_at": b.created_at.isoformat() if b.created_at else None} for b in rows]


# ---------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Job:
    id: int
    broadcast_id: int
    platform: str
    language: str
    addresses: tuple[str, ...]
    retry_key: str
    attempts: int
    claim: str


class BroadcastWorker:
    """Claims delivery jobs and sends them; any number of workers may run against one database."""

    def __init__(
        self,
        kb: KnowledgeBase,
        sessions: sessionmaker[Session],
        senders: Mapping[str, BroadcastSender],
        *,
        lease: float = LEASE_SECONDS,
        idle: float = 1.0,
        name: str = "",
    ) -> None:
        self.kb = kb
        self.sessions = sessions
        self.senders = senders
        self.lease = lease
        self.idle = idle
        self.name = name or uuid.uuid4().hex[:8]
        self._stopping = asyncio.Event()
        self._texts: dict[int, dict[str, Any]] = {}
        self._checkin = {name for name, spec in load_alerts(kb.root).items() if spec.checkin}

    # ------------------------------------------------------------ claiming

    def claim(self, platform: str, limit: int) -> list[Job]:
        """Take up to ``limit`` due jobs; no other worker can take them until their lease ends."""
        now = utcnow()
        token = f"{self.name}-{uuid.uuid4().hex[:12]}"
        with self.sessions() as session:
            expired = list(session.scalars(
                select(BroadcastDelivery.id)
                .where(BroadcastDelivery.status == "sending", BroadcastDelivery.platform == platform,
                       BroadcastDelivery.lease_until < now)
            ))
            if expired:  # an idle worker only reads: no write lock taken every second on SQLite
                session.execute(
                    update(BroadcastDelivery)
                    .where(BroadcastDelivery.id.in_(expired), BroadcastDelivery.status == "sending",
                           BroadcastDelivery.lease_until < now)
                    .values(status="queued", claim=None, detail="claim expired (worker stopped)")
                )
                log.warning("broadcast jobs=%s given back after their worker's lease ended", expired)
            session.commit()
            query = (
                select(BroadcastDelivery.id)
                .where(BroadcastDelivery.status == "queued", BroadcastDelivery.platform == platform,
                       BroadcastDelivery.next_attempt_at <= now)
                .order_by(BroadcastDelivery.next_attempt_at, BroadcastDelivery.id)
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if not ids:
                session.commit()
                return []
            session.execute(
                update(BroadcastDelivery)
                .where(BroadcastDelivery.id.in_(ids), BroadcastDelivery.status == "queued")
                .values(status="sending", claim=token, lease_until=now + dt.timedelta(seconds=self.lease),
                        attempts=BroadcastDelivery.attempts + 1, updated_at=now)
            )
            session.commit()
            rows = session.scalars(
                select(BroadcastDelivery).where(BroadcastDelivery.claim == token,
                                                BroadcastDelivery.status == "sending")
            ).all()
            jobs = [Job(r.id, r.broadcast_id, r.platform, r.language, tuple(str(a) for a in r.addresses),
                        r.retry_key, r.attempts, token) for r in rows]
            started = {j.broadcast_id for j in jobs}
            session.execute(update(Broadcast).where(Broadcast.id.in_(started), Broadcast.status == "queued")
                            .values(status="sending"))
            session.commit()
        return jobs

    # ------------------------------------------------------------ sending

    def _reply(self, job: Job) -> Reply:
        texts = self._texts.get(job.broadcast_id)
        if texts is None:
            with self.sessions() as session:
                broadcast = session.get(Broadcast, job.broadcast_id)
                assert broadcast is not None
                texts = {"texts": dict(broadcast.texts), "checkin": broadcast.template in self._checkin}
            self._texts[job.broadcast_id] = texts
        language = job.language if job.language in texts["texts"] else FALLBACK_LANGUAGE
        buttons = checkin_buttons(self.kb, job.broadcast_id, language) if texts["checkin"] else ()
        return Reply(text=str(texts["texts"][language]), buttons=buttons, key=f"alert:{job.broadcast_id}")

    async def _send(self, sender: BroadcastSender, job: Job) -> SendResult:
        try:
            return await sender.send(job.addresses, self._reply(job), job.retry_key)
        except Exception as exc:  # a sender bug must not lose the job: it is retried
            log.exception("broadcast job=%s sender raised", job.id)
            return SendResult("retry", f"sender error {type(exc).__name__}")

    def _record(self, results: Sequence[tuple[Job, SendResult]]) -> None:
        now = utcnow()
        blocked: list[tuple[str, str]] = []
        with self.sessions() as session:
            for job, result in results:
                values: dict[str, Any] = {"claim": None, "lease_until": None, "updated_at": now,
                                          "detail": result.detail[:200]}
                outcome = result.outcome
                if outcome == "retry" and job.attempts >= MAX_ATTEMPTS:
                    outcome = "failed"
                    values["detail"] = f"gave up after {job.attempts} attempts: {result.detail}"[:200]
                if outcome == "retry":
                    wait = BACKOFF[min(job.attempts - 1, len(BACKOFF) - 1)]
                    if result.retry_after is not None:
                        wait = max(wait, result.retry_after)
                    values.update(status="queued", next_attempt_at=now + dt.timedelta(seconds=wait))
                else:
                    values["status"] = outcome
                if outcome == "blocked":
                    blocked.extend((job.platform, address) for address in job.addresses)
                session.execute(
                    update(BroadcastDelivery)
                    .where(BroadcastDelivery.id == job.id, BroadcastDelivery.claim == job.claim)
                    .values(**values)
                )
            for platform, address in blocked:
                session.execute(update(Identity).where(Identity.platform == platform,
                                                       Identity.platform_user_id == address)
                                .values(unsubscribed=True))
            session.commit()
        for job, result in results:
            if result.outcome != "sent":
                log.info("broadcast job=%s alert=%s platform=%s outcome=%s attempt=%d %s", job.id,
                         job.broadcast_id, job.platform, result.outcome, job.attempts, result.detail)

    def _finish(self, broadcast_ids: set[int]) -> None:
        with self.sessions() as session:
            for broadcast_id in broadcast_ids:
                open_jobs = session.scalar(
                    select(func.count()).select_from(BroadcastDelivery)
                    .where(BroadcastDelivery.broadcast_id == broadcast_id,
                           BroadcastDelivery.status.in_(("queued", "sending")))
                )
                if not open_jobs:
                    session.execute(update(Broadcast).where(Broadcast.id == broadcast_id,
                                                            Broadcast.status != "done")
                                    .values(status="done", finished_at=utcnow()))
                    log.warning("alert=%s delivered", broadcast_id)
            session.commit()

    async def run_once(self, platform: str) -> int:
        """Claim and send one round of jobs for ``platform``; returns how many jobs were tried."""
        sender = self.senders[platform]
        jobs = await asyncio.to_thread(self.claim, platform, max(1, sender.concurrency))
        if not jobs:
            return 0
        # in flight sends are finished and recorded even when the worker is being stopped
        results = await asyncio.shield(self._send_and_record(sender, jobs))
        return len(results)

    async def _send_and_record(self, sender: BroadcastSender, jobs: Sequence[Job]) -> list[SendResult]:
        results = await asyncio.gather(*(self._send(sender, job) for job in jobs))
        await asyncio.to_thread(self._record, list(zip(jobs, results, strict=True)))
        await asyncio.to_thread(self._finish, {job.broadcast_id for job in jobs})
        return list(results)

    async def _platform_loop(self, platform: str) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.run_once(platform)
            except Exception:  # the worker must outlive any one failure
                log.exception("broadcast round failed platform=%s", platform)
                done = 0
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.idle)

    async def run(self) -> None:
        """Deliver until :meth:`stop`; own loops per platform, so a slow platform never holds up another.

        Two loops per platform: while one records its round in the database, the other sends.
        """
        self._stopping.clear()
        await asyncio.gather(*(self._platform_loop(p) for p in self.senders for _ in range(LOOPS)))

    def stop(self) -> None:
        self._stopping.set()

    def pending(self, broadcast_id: int | None = None) -> int:
        """Jobs still queued or being sent (of one alert, or of all)."""
        with self.sessions() as session:
            query = select(func.count()).select_from(BroadcastDelivery).where(
                BroadcastDelivery.status.in_(("queued", "sending")),
                BroadcastDelivery.platform.in_(list(self.senders)),
            )
            if broadcast_id is not None:
                query = query.where(BroadcastDelivery.broadcast_id == broadcast_id)
            return int(session.scalar(query) or 0)

    async def drain(self, broadcast_id: int | None = None, timeout: float = 3600.0) -> bool:
        """Deliver until nothing is left to send (retries included); True when finished in time."""
        deadline = time.monotonic() + timeout
        runner = asyncio.create_task(self.run())
        try:
            while time.monotonic() < deadline:
                if not await asyncio.to_thread(self.pending, broadcast_id):
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            self.stop()
            await runner

