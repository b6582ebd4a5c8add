"""Engine set-up and transactions for SQLite (default) and PostgreSQL.

SQLite: one file in WAL mode (readers never block the writer), a busy timeout instead of
"database is locked" errors, foreign keys on, and `BEGIN IMMEDIATE` for every write
transaction, so the write lock is taken before the first read of a read-then-write
(a lease) and two leases can never interleave. SQLAlchemy takes over BEGIN from the
sqlite3 module to make that possible (the recipe in SQLAlchemy's SQLite docs).

PostgreSQL (psycopg 3): READ COMMITTED plus row locks (`FOR UPDATE [SKIP LOCKED]`) in
the lease and submit transactions; see assign.py.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rlhfkit.feedback import schema as t

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "rlhfkit_write"


class SchemaError(RuntimeError):
    """The database is missing its tables or was made by another schema version."""


def normalise_url(db_url: str) -> str:
    """Accept a bare file path (SQLite) and plain `postgresql://` URLs (use psycopg 3)."""
    if "://" not in db_url:
        return f"sqlite:///{db_url}"
    for prefix in ("postgresql://", "postgres://"):
        if db_url.startswith(prefix):
            return "postgresql+psycopg://" + db_url[len(prefix) :]
    return db_url


def redact_url(db_url: str) -> str:
    """The URL with any password hidden, for logs and manifests."""
    return sa.make_url(normalise_url(db_url)).render_as_string(hide_password=True)


def make_engine(db_url: str) -> Engine:
    url = sa.make_url(normalise_url(db_url))
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            raise ValueError(
                "An in-memory SQLite database cannot be shared by the server's connections; "
                "give a file path such as sqlite:///feedback.db."
            )
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=16,
            max_overflow=16,
        )
        _install_sqlite_hooks(engine)
        return engine
    if backend == "postgresql":
        return sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    raise ValueError(f"Unsupported database URL {redact_url(db_url)!r}: use sqlite:/// or postgresql://.")


def _install_sqlite_hooks(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe in WAL mode
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@dataclass
class Database:
    """An engine plus the clock every expiry decision uses (injectable for tests)."""

    engine: Engine
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def open(cls, db_url: str, clock: Callable[[], float] = time.time, *, check: bool = True) -> Database:
        engine = make_engine(db_url)
        if check and engine.dialect.name == "sqlite" and not Path(engine.url.database or "").is_file():
            engine.dispose()
            raise SchemaError(f"There is no database file {engine.url.database}; run `rlhfkit annotate init` first.")
        db = cls(engine, clock)
        if check:
            check_schema(db)
        return db

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def now(self) -> float:
        return float(self.clock())

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction; `snapshot=True` makes every statement see the same snapshot.

        SQLite's deferred transaction already reads one snapshot from its first SELECT on;
        PostgreSQL needs REPEATABLE READ for that (READ COMMITTED re-snapshots per statement).
        """
        with self.engine.connect() as conn:
            if snapshot and self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it holds the database write lock from its first statement."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def init_schema(db: Database) -> bool:
    """Create the tables and the version row if missing; True if the database was new.

    Also creates the per-database secret used to pseudonymise annotators in exports.
    """
    with db.write() as conn:
        t.metadata.create_all(conn)
        version = conn.execute(sa.select(sa.func.max(t.schema_version.c.version))).scalar()
        if version is None:
            conn.execute(sa.insert(t.schema_version).values(version=t.SCHEMA_VERSION, applied_at=db.now()))
            conn.execute(sa.insert(t.settings).values(key="pseudonym_key", value=secrets.token_hex(32)))
            return True
    check_schema(db)
    return False


def check_schema(db: Database) -> None:
    try:
        with db.read() as conn:
            version = conn.execute(sa.select(sa.func.max(t.schema_version.c.version))).scalar()
    except sa.exc.DBAPIError as err:
        if "schema_version" not in str(err):
            raise
        version = None
    if version is None:
        raise SchemaError(
            f"The database {redact_url(str(db.engine.url))} has no rlhfkit feedback tables; "
            "run `rlhfkit annotate init` first."
        )
    if version != t.SCHEMA_VERSION:
        raise SchemaError(
            f"The database {redact_url(str(db.engine.url))} has schema version {version}, "
            f"but this rlhfkit expects version {t.SCHEMA_VERSION}."
        )


def get_setting(conn: Connection, key: str) -> str:
    value = conn.execute(sa.select(t.settings.c.value).where(t.settings.c.key == key)).scalar()
    if value is None:
        raise SchemaError(f"The database has no setting {key!r}; was it created by `rlhfkit annotate init`?")
    return value


def audit(
    conn: Connection,
    now: float,
    event: str,
    *,
    user_id: int | None = None,
    subject: str = "",
    ip: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one row to the audit log (inside the caller's transaction)."""
    json.dumps(detail or {})  # fail here, not at commit, if the detail is not JSON
    conn.execute(
        sa.insert(t.audit_log).values(
            at=now, user_id=user_id, event=event, subject=subject[:128], ip=ip[:64], detail=detail or {}
        )
    )
