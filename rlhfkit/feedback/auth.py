"""Users, login sessions and the login rate limit.

There is no default account and no sign-up: users are created by `rlhfkit annotate user`
or by an admin. Failed logins are written to the audit log, which doubles as the rate
limiter's memory, so the limit holds across restarts, worker processes and back ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from rlhfkit.feedback import schema as t
from rlhfkit.feedback.db import Database, audit
from rlhfkit.feedback.security import (
    burn_password_check,
    hash_password,
    new_token,
    password_problem,
    token_hash,
    verify_password,
)

ROLES = ("admin", "annotator")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    token_hash: str


class LoginFailed(Exception):
    """Wrong user name or password (deliberately not saying which)."""


class LoginRateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed logins; try again in {retry_after} seconds.")
        self.retry_after = retry_after


def _row_to_user(row: sa.Row) -> User:
    return User(id=row.id, name=row.name, role=row.role, active=bool(row.active))


def validate_new_user(name: str, role: str, password: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(
            f"User name {name!r} is not allowed: use 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit."
        )
    if role not in ROLES:
        raise ValueError(f"Role {role!r} is unknown; valid roles: {', '.join(ROLES)}.")
    problem = password_problem(name, password)
    if problem:
        raise ValueError(f"Password for {name!r} refused: {problem}.")


def create_user(db: Database, name: str, role: str, password: str, *, actor: User | None = None) -> User:
    """Create an active user; ValueError if the name, role or password is refused or the name is taken."""
    validate_new_user(name, role, password)
    password_hash = hash_password(password)  # slow: computed outside the write lock
    with db.write() as conn:
        taken = conn.execute(sa.select(t.users.c.id).where(sa.func.lower(t.users.c.name) == name.lower())).first()
        if taken:
            raise ValueError(f"A user named {name!r} already exists.")
        user_id = conn.execute(
            sa.insert(t.users)
            .values(name=name, role=role, password_hash=password_hash, active=True, created_at=db.now())
            .returning(t.users.c.id)
        ).scalar_one()
        audit(conn, db.now(), "user_created", user_id=actor.id if actor else None, subject=name,
              detail={"role": role})
    return User(id=user_id, name=name, role=role)


def set_password(db: Database, name: str, password: str) -> None:
    problem = password_problem(name, password)
    if problem:
        raise ValueError(f"Password for {name!r} refused: {problem}.")
    password_hash = hash_password(password)
    with db.write() as conn:
        user = get_user(conn, name)
        conn.execute(sa.update(t.users).where(t.users.c.id == user.id).values(password_hash=password_hash))
        conn.execute(sa.delete(t.sessions).where(t.sessions.c.user_id == user.id))
        audit(conn, db.now(), "password_set", user_id=user.id, subject=name)


def set_active(db: Database, name: str, active: bool, *, actor: User | None = None) -> None:
    """(De)activate a user; deactivation ends their sessions at once."""
    with db.write() as conn:
        user = get_user(conn, name)
        conn.execute(sa.update(t.users).where(t.users.c.id == user.id).values(active=active))
        if not active:
            conn.execute(sa.delete(t.sessions).where(t.sessions.c.user_id == user.id))
        audit(conn, db.now(), "user_activated" if active else "user_deactivated",
              user_id=actor.id if actor else None, subject=name)


def get_user(conn: sa.Connection, name: str) -> User:
    row = conn.execute(sa.select(t.users).where(t.users.c.name == name)).first()
    if row is None:
        raise ValueError(f"There is no user named {name!r}.")
    return _row_to_user(row)


def list_users(db: Database) -> list[User]:
    with db.read() as conn:
        return [_row_to_user(r) for r in conn.execute(sa.select(t.users).order_by(t.users.c.name))]


def _failures_since(conn: sa.Connection, since: float, *, subject: str | None = None, ip: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(t.audit_log).where(
        t.audit_log.c.event == "login_failed", t.audit_log.c.at > since
    )
    if subject is not None:
        query = query.where(t.audit_log.c.subject == subject)
    if ip is not None:
        query = query.where(t.audit_log.c.ip == ip)
    return int(conn.execute(query).scalar_one())


# Any constant: the key of the PostgreSQL advisory lock that serialises login checks (below).
_LOGIN_LOCK_KEY = 0x726C686B_6C6F67  # "rlhklog"


def _lock_login_checks(db: Database, conn: sa.Connection) -> None:
    """Serialise the rate-limit check-and-count across every connection and server process.

    SQLite's write transaction (`BEGIN IMMEDIATE`) already holds the database write lock; on
    PostgreSQL a transaction-scoped advisory lock does the same for logins only (READ COMMITTED
    re-reads after the lock is granted, so each check sees every earlier attempt).
    """
    if db.dialect == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOGIN_LOCK_KEY)))


def _reserve_attempt(db: Database, subject: str, ip: str, max_failures: int, window_seconds: float) -> int:
    """Check the limit and count this attempt as a failure, in one locked transaction; its audit row id.

    Counting before the password is checked is what makes the limit hold under concurrency: a
    check-then-record gap let 60 simultaneous guesses get 43 password checks (issue 19). A success
    turns the row into a `login` (see `login`); a crash mid-check leaves it counted as a failure.
    """
    with db.write() as conn:
        _lock_login_checks(db, conn)
        now = db.now()
        since = now - window_seconds
        if (_failures_since(conn, since, subject=subject) >= max_failures
                or _failures_since(conn, since, ip=ip) >= 4 * max_failures):
            raise LoginRateLimited(int(window_seconds))
        return conn.execute(
            sa.insert(t.audit_log).values(at=now, user_id=None, event="login_failed", subject=subject,
                                          ip=ip[:64], detail={}).returning(t.audit_log.c.id)
        ).scalar_one()


def login(
    db: Database, name: str, password: str, *, ip: str, session_seconds: float,
    max_failures: int, window_seconds: float,
) -> tuple[str, Session]:
    """Check the password and open a session; returns (cookie token, session).

    Raises LoginRateLimited when this name had `max_failures` failures (or this address
    4x as many) within the window, checked before the password so a locked account
    cannot be probed; LoginFailed on a wrong name or password. Attempts whose password
    check is still running count as failures, so concurrent guesses cannot pass the limit.
    """
    subject = name.strip().lower()[:128]
    attempt_id = _reserve_attempt(db, subject, ip, max_failures, window_seconds)
    with db.read() as conn:
        row = conn.execute(sa.select(t.users).where(t.users.c.name == name, t.users.c.active.is_(True))).first()
    if row is None:
        burn_password_check(password)
        ok = False
    else:
        ok = verify_password(password, row.password_hash)
    if not ok:
        raise LoginFailed("Wrong user name or password.")
    user = _row_to_user(row)
    token, csrf = new_token(), new_token()
    with db.write() as conn:
        now = db.now()
        conn.execute(sa.delete(t.sessions).where(t.sessions.c.expires_at <= now))
        conn.execute(
            sa.insert(t.sessions).values(
                token_hash=token_hash(token), user_id=user.id, csrf_token=csrf, created_at=now,
                expires_at=now + session_seconds,
            )
        )
        # The reserved attempt becomes the audit log's record of this login.
        conn.execute(sa.update(t.audit_log).where(t.audit_log.c.id == attempt_id)
                     .values(event="login", user_id=user.id, at=now))
    return token, Session(user=user, csrf_token=csrf, token_hash=token_hash(token))


def session_for_token(db: Database, token: str | None) -> Session | None:
    """The live session of an active user behind a cookie token, else None."""
    if not token or len(token) > 128:
        return None
    hashed = token_hash(token)
    query = (
        sa.select(t.users, t.sessions.c.csrf_token)
        .join(t.sessions, t.sessions.c.user_id == t.users.c.id)
        .where(t.sessions.c.token_hash == hashed, t.sessions.c.expires_at > db.now(), t.users.c.active.is_(True))
    )
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return Session(user=_row_to_user(row), csrf_token=row.csrf_token, token_hash=hashed)


def logout(db: Database, session: Session) -> None:
    with db.write() as conn:
        conn.execute(sa.delete(t.sessions).where(t.sessions.c.token_hash == session.token_hash))
        audit(conn, db.now(), "logout", user_id=session.user.id, subject=session.user.name)
