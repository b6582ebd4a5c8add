"""Database schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Times are stored as Unix seconds (float) so that both back ends compare them the same way
and the app's single clock decides what "expired" means.

Canonical order: `responses.position` is the order of the import file; every stored
result (`judgments.ranking`) uses these positions. The order shown on screen lives only
in `assignments.presented_order` (presented_order[screen_slot] = canonical position).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 1
"""Bump on any change to the tables below; the app refuses a database of another version."""

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),  # "admin" | "annotator"
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", sa.Double, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    # SHA-256 of the cookie token: a leaked database does not hand out live sessions.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(128), nullable=False, unique=True),
    sa.Column("kind", sa.String(8), nullable=False),  # "pair" | "rank" | "demo"
    sa.Column("prompt", sa.Text, nullable=False),
    # SHA-256 of kind + prompt + responses: the same candidate set is never imported twice.
    sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("overlap", sa.Integer, nullable=False),
    sa.Column("gold", sa.JSON(none_as_null=True), nullable=True),  # {"best": i} or {"ranking": [...]}; never rendered
    # Random per item, fixed at import: ties in "fewest judgments" are broken by it, which
    # mixes gold items in among the others instead of serving them in file order.
    sa.Column("shuffle_key", sa.Double, nullable=False, index=True),
    sa.Column("batch", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.UniqueConstraint("item_id", "position"),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("id", sa.String(43), primary_key=True),  # random, unguessable
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("presented_order", sa.JSON, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # "leased" | "submitted" | "skipped"
    sa.Column("leased_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=True),
    # An annotator sees an item at most once, whatever happened to the first lease.
    sa.UniqueConstraint("item_id", "user_id"),
    sa.Index("ix_assignments_item_status", "item_id", "status"),
    sa.Index("ix_assignments_user_status", "user_id", "status"),
)

judgments = sa.Table(
    "judgments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # Unique: one assignment yields at most one judgment, whatever the client retries.
    sa.Column("assignment_id", sa.String(43), sa.ForeignKey("assignments.id"), nullable=False, unique=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("outcome", sa.String(12), nullable=False),  # "ranked" | "tie" | "both_bad" | "demo"
    sa.Column("ranking", sa.JSON(none_as_null=True), nullable=True),  # canonical positions, best first
    sa.Column("response_text", sa.Text, nullable=True),  # the written demonstration
    sa.Column("flags", sa.JSON, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("duration_s", sa.Double, nullable=False),
    sa.Column("submitted_at", sa.Double, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False, default=""),
    sa.Column("ip", sa.String(64), nullable=False, default=""),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("ix_audit_event_subject_at", "event", "subject", "at"),
    sa.Index("ix_audit_event_ip_at", "event", "ip", "at"),
)
