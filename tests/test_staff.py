"""Staff accounts: argon2 hashes, lockout after repeated failures, API tokens stored hashed, audit rows."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.db import make_engine, sessions, upgrade
from bot.db.models import ApiToken, AuditEntry, StaffUser
from bot.settings import PROJECT
from bot.staff import (
    LOCKOUT,
    MAX_FAILED_LOGINS,
    StaffError,
    audit,
    create_staff,
    create_token,
    revoke_token,
    verify_password,
    verify_token,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def db(database_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield sessions(engine)
    engine.dispose()


def test_password_is_stored_as_argon2_and_checked(db: sessionmaker[Session]) -> None:
    with db() as session:
        staff = create_staff(session, "tanaka", PASSWORD, display_name="田中")
        session.commit()
        stored = session.scalar(select(StaffUser.password_hash).where(StaffUser.id == staff.id))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    with db() as session:
        ok = verify_password(session, "tanaka", PASSWORD)
        assert ok.staff is not None and (ok.staff.display_name, ok.staff.role) == ("田中", "staff")
        assert verify_password(session, "tanaka", "wrong password!").reason == "invalid"
        assert verify_password(session, "nobody", PASSWORD).reason == "invalid"


def test_bad_accounts_are_refused(db: sessionmaker[Session]) -> None:
    with db() as session:
        create_staff(session, "sato", PASSWORD, role="admin")
        session.commit()
        with pytest.raises(StaffError, match="taken"):
            create_staff(session, "sato", PASSWORD)
        with pytest.raises(StaffError, match="at least"):
            create_staff(session, "short", "12345")
        with pytest.raises(StaffError, match="role"):
            create_staff(session, "root", PASSWORD, role="root")


def test_five_failures_lock_the_account_for_fifteen_minutes(db: sessionmaker[Session]) -> None:
    now = dt.datetime(2026, 12, 7, 1, 0, tzinfo=dt.UTC)
    with db() as session:
        staff = create_staff(session, "suzuki", PASSWORD)
        session.commit()
    with db() as session:
        results = [verify_password(session, "suzuki", f"guess {i}", now=now) for i in range(MAX_FAILED_LOGINS)]
    assert [r.reason for r in results] == ["invalid"] * (MAX_FAILED_LOGINS - 1) + ["locked"]
    with db() as session:
        locked = verify_password(session, "suzuki", PASSWORD, now=now + dt.timedelta(minutes=14))
        assert (locked.staff, locked.reason) == (None, "locked"), "the right password does not open a locked account"
        later = verify_password(session, "suzuki", PASSWORD, now=now + LOCKOUT + dt.timedelta(seconds=1))
        assert later.staff is not None and later.staff.id == staff.id
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.staff_id == staff.id)).all()
    assert actions == ["account_locked"]


def test_tokens_are_stored_hashed_and_can_be_revoked(db: sessionmaker[Session]) -> None:
    with db() as session:
        staff = create_staff(session, "ito", PASSWORD)
        token = create_token(session, staff.id, "script")
        session.commit()
        row = session.scalars(select(ApiToken)).one()
        assert token not in row.token_hash and len(row.token_hash) == 64
    with db() as session:
        member = verify_token(session, token)
        assert member is not None and member.login == "ito"
        assert session.scalars(select(ApiToken.last_used_at)).one() is not None
        assert verify_token(session, token + "x") is None
        assert verify_token(session, "") is None
        assert revoke_token(session, row.id)
        session.commit()
        assert verify_token(session, token) is None


def test_an_inactive_account_cannot_sign_in_or_use_tokens(db: sessionmaker[Session]) -> None:
    with db() as session:
        staff = create_staff(session, "kato", PASSWORD)
        token = create_token(session, staff.id)
        session.get(StaffUser, staff.id).active = False  # type: ignore[union-attr]
        session.commit()
        assert verify_password(session, "kato", PASSWORD).reason == "inactive"
        assert verify_token(session, token) is None


def test_audit_rows_carry_identifiers(db: sessionmaker[Session]) -> None:
    with db() as session:
        staff = create_staff(session, "yamada", PASSWORD)
        audit(session, staff.id, "reply", ("escalation", 12), {"language": "vi"})
        session.commit()
        row = session.scalars(select(AuditEntry)).one()
    assert (row.staff_id, row.action, row.target_type, row.target_id, row.detail) == (
        staff.id, "reply", "escalation", "12", {"language": "vi"}
    )


def test_create_admin_and_token_commands(tmp_path: object, database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    created = subprocess.run(
        [sys.executable, "-m", "bot", "create-admin", "--login", "chief", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=PROJECT, env=env, timeout=120,
    )
    assert created.returncode == 0, created.stderr
    assert "created admin 'chief'" in created.stdout and PASSWORD not in created.stdout + created.stderr
    weak = subprocess.run(
        [sys.executable, "-m", "bot", "create-admin", "--login", "other", "--password-stdin"],
        input="short\n", capture_output=True, text=True, cwd=PROJECT, env=env, timeout=120,
    )
    assert weak.returncode == 1 and "at least" in weak.stderr
    token = subprocess.run(
        [sys.executable, "-m", "bot", "create-token", "--login", "chief"],
        capture_output=True, text=True, cwd=PROJECT, env=env, timeout=120,
    )
    assert token.returncode == 0, token.stderr
    engine = make_engine(database_url)
    try:
        with sessions(engine)() as session:
            member = verify_token(session, token.stdout.strip())
            assert member is not None and (member.login, member.role) == ("chief", "admin")
    finally:
        engine.dispose()
