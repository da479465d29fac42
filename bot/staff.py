"""Staff accounts: argon2 passwords with lockout, API tokens (stored hashed), the audit log.

Every function takes an open session and leaves committing to the caller, except where a
docstring says otherwise. Nothing here logs a password or a token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db.models import ApiToken, AuditEntry, StaffUser, utcnow

log = logging.getLogger(__name__)

ROLES = ("staff", "admin")
MAX_FAILED_LOGINS = 5
LOCKOUT = dt.timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "cst_"

_hasher = PasswordHasher()  # stateless parameters only; no connection or secret


class StaffError(ValueError):
    """A staff account could not be created or changed (the message says why)."""


@dataclass(frozen=True)
class StaffMember:
    """A signed-in staff member, as the console and the API see them."""

    id: int
    login: str
    display_name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def of(cls, row: StaffUser) -> StaffMember:
        return cls(id=row.id, login=row.login, display_name=row.display_name, role=row.role)


@dataclass(frozen=True)
class LoginResult:
    """The outcome of a password check: ``staff`` when it succeeded, else why not."""

    staff: StaffMember | None
    reason: str = ""
    """``""`` on success, ``invalid`` (unknown login or wrong password), ``locked`` or ``inactive``."""
    locked_until: dt.datetime | None = None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # SQLite returns naive datetimes
    return value


def create_staff(
    session: Session, login: str, password: str, *, display_name: str = "", role: str = "staff"
) -> StaffMember:
    """Create an account; raises :class:`StaffError` for a taken login, bad role or short password."""
    login = login.strip()
    if not login or len(login) > 64:
        raise StaffError("the login must have 1 to 64 characters")
    if role not in ROLES:
        raise StaffError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(StaffUser.id).where(StaffUser.login == login)) is not None:
        raise StaffError(f"the login {login!r} is taken")
    row = StaffUser(
        login=login, display_name=display_name.strip() or login, role=role,
        password_hash=_hasher.hash(password), failed_logins=0, active=True,
    )
    session.add(row)
    session.flush()
    log.info("staff account created staff=%s role=%s", row.id, role)
    return StaffMember.of(row)


def set_password(session: Session, staff_id: int, password: str) -> None:
    """Replace a password (and lift a lockout)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    row = session.get(StaffUser, staff_id)
    if row is None:
        raise StaffError("no such staff account")
    row.password_hash = _hasher.hash(password)
    row.failed_logins = 0
    row.locked_until = None


def verify_password(session: Session, login: str, password: str, *, now: dt.datetime | None = None) -> LoginResult:
    """Check a login; counts failures and locks the account for 15 minutes after 5 in a row.

    Commits (a failure must be counted even if the caller then raises). A locked account is
    refused even with the right password, so a guesser learns nothing while it is locked.
    """
    now = now or utcnow()
    row = session.scalar(select(StaffUser).where(StaffUser.login == login.strip()))
    if row is None:
        _hasher.hash(password)  # the same work as a real check: no timing hint about which logins exist
        return LoginResult(None, "invalid")
    locked_until = _aware(row.locked_until)
    if locked_until is not None and locked_until > now:
        return LoginResult(None, "locked", locked_until)
    try:
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        row.failed_logins = (row.failed_logins or 0) + 1
        if row.failed_logins >= MAX_FAILED_LOGINS:
            row.locked_until = now + LOCKOUT
            row.failed_logins = 0
            session.add(AuditEntry(staff_id=row.id, action="account_locked", target_type="staff",
                                   target_id=str(row.id), detail={"minutes": int(LOCKOUT.total_seconds() // 60)}))
            session.commit()
            log.warning("staff=%s locked after %d failed logins", row.id, MAX_FAILED_LOGINS)
            return LoginResult(None, "locked", row.locked_until)
        session.commit()
        return LoginResult(None, "invalid")
    if not row.active:
        return LoginResult(None, "inactive")
    row.failed_logins = 0
    row.locked_until = None
    row.last_login_at = now
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)
    session.commit()
    return LoginResult(StaffMember.of(row))


def get_staff(session: Session, staff_id: int) -> StaffMember | None:
    """An active account by id (what a console session cookie refers to)."""
    row = session.get(StaffUser, staff_id)
    if row is None or not row.active:
        return None
    return StaffMember.of(row)


def list_staff(session: Session) -> list[StaffMember]:
    return [StaffMember.of(row) for row in session.scalars(select(StaffUser).order_by(StaffUser.login))]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, staff_id: int, label: str = "") -> str:
    """A new API token for a staff member; returned once, only its SHA-256 is stored."""
    if session.get(StaffUser, staff_id) is None:
        raise StaffError("no such staff account")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=_token_hash(token), staff_id=staff_id, label=label[:128])
    session.add(row)
    session.flush()
    log.info("api token=%s created for staff=%s", row.id, staff_id)
    return token


def verify_token(session: Session, token: str, *, now: dt.datetime | None = None) -> StaffMember | None:
    """The active staff member a token belongs to (and records its use), or None. Commits."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))
    )
    if row is None:
        return None
    staff = session.get(StaffUser, row.staff_id)
    if staff is None or not staff.active:
        return None
    row.last_used_at = now or utcnow()
    session.commit()
    return StaffMember.of(staff)


def revoke_token(session: Session, token_id: int) -> bool:
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def audit(
    session: Session,
    staff_id: int | None,
    action: str,
    target: tuple[str, object] | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Record one staff action, e.g. ``audit(s, staff.id, "reply", ("escalation", 12), {"via": "argos"})``.

    ``detail`` holds identifiers and choices, never message bodies or secrets.
    """
    target_type, target_id = (target[0], str(target[1])) if target else (None, None)
    row = AuditEntry(staff_id=staff_id, action=action, target_type=target_type, target_id=target_id,
                     detail=dict(detail) if detail else None, at=utcnow())
    session.add(row)
    return row
