"""The console's session cookie, CSRF tokens and per-address login limit.

The session is a signed cookie (itsdangerous, the secret from settings or generated once into the
data folder), HttpOnly and SameSite=Lax. It carries the staff id and a CSRF token; every visitor,
signed in or not, gets one, so the login form is protected too. Nothing is kept in process memory:
failed logins per address are counted in the audit log, so several app workers agree.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.db.models import AuditEntry, utcnow
from bot.settings import Settings

COOKIE = "consult_console"
SECRET_FILE = "console_session_secret"


def session_secret(settings: Settings) -> str:
    """The configured secret, else one generated into the data folder on first start (mode 0600)."""
    configured = settings.session_secret.get_secret_value()
    if configured:
        return configured
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="ascii").strip()
        if len(value) >= 32:
            return value
        raise RuntimeError(f"{path} holds no usable secret; delete it to generate a new one") from None
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value


@dataclass
class ConsoleSession:
    """What the cookie says: the CSRF token, and the staff member once signed in."""

    csrf: str
    staff_id: int | None = None
    flash: str = ""
    changed: bool = False

    def as_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"csrf": self.csrf}
        if self.staff_id is not None:
            payload["staff"] = self.staff_id
        if self.flash:
            payload["flash"] = self.flash
        return payload

    def sign_in(self, staff_id: int) -> None:
        """A new CSRF token on every sign-in (no token fixed before login survives it)."""
        self.staff_id = staff_id
        self.csrf = secrets.token_urlsafe(32)
        self.changed = True

    def sign_out(self) -> None:
        self.staff_id = None
        self.csrf = secrets.token_urlsafe(32)
        self.flash = ""
        self.changed = True

    def say(self, text: str) -> None:
        """A one-line notice shown on the next page."""
        self.flash = text
        self.changed = True

    def pop_flash(self) -> str:
        text, self.flash = self.flash, ""
        if text:
            self.changed = True
        return text

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf)


class SessionCodec:
    """Signs and reads the cookie; ``max_age`` bounds how long a session lives."""

    def __init__(self, secret: str, max_age: float, secure: bool) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="consult-console-session")
        self.max_age = int(max_age)
        self.secure = secure

    def load(self, cookie: str | None) -> ConsoleSession:
        if cookie:
            try:
                data = self.serializer.loads(cookie, max_age=self.max_age)
            except BadSignature:  # also an expired one (SignatureExpired is a BadSignature)
                data = None
            if isinstance(data, dict) and isinstance(data.get("csrf"), str):
                staff = data.get("staff")
                return ConsoleSession(
                    csrf=data["csrf"],
                    staff_id=staff if isinstance(staff, int) else None,
                    flash=str(data.get("flash") or ""),
                )
        return ConsoleSession(csrf=secrets.token_urlsafe(32), changed=True)

    def dump(self, session: ConsoleSession) -> str:
        return str(self.serializer.dumps(session.as_payload()))

    def cookie_args(self) -> dict[str, Any]:
        return {"key": COOKIE, "max_age": int(self.max_age), "httponly": True, "samesite": "lax",
                "secure": self.secure, "path": "/"}


def failed_logins_from(session: Session, address: str, window: dt.timedelta, now: dt.datetime | None = None) -> int:
    """Failed console logins from one address within ``window`` (counted in the audit log)."""
    since = (now or utcnow()) - window
    return int(
        session.scalar(
            select(func.count(AuditEntry.id)).where(
                AuditEntry.action == "login_failed",
                AuditEntry.target_type == "address",
                AuditEntry.target_id == address[:64],
                AuditEntry.at >= since,
            )
        )
        or 0
    )
