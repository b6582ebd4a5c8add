"""Typed settings of the preference-collection app (one dataclass, validated up front)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///feedback.db"


@dataclass
class AppConfig:
    """Everything the web app needs besides the database contents.

    Defaults are the safe ones for a loopback server: small request bodies, short leases,
    a strict login rate limit. Set `secure_cookies=True` whenever the app is served over https.
    """

    db_url: str = DEFAULT_DB_URL
    """SQLAlchemy URL: `sqlite:///path.db` (default) or `postgresql://user@host/db`."""
    lease_seconds: float = 30 * 60
    """How long a leased assignment stays reserved for its annotator before others may take the slot."""
    session_seconds: float = 12 * 3600
    """Lifetime of a login session."""
    secure_cookies: bool = False
    """Set the cookie `Secure` flag; required when served over https, breaks plain-http logins."""
    max_body_bytes: int = 256 * 1024
    """Largest request body accepted on any route except the import upload (413 beyond)."""
    max_import_bytes: int = 64 * 1024 * 1024
    """Largest candidates file accepted by the admin import upload."""
    login_max_failures: int = 5
    """Failed logins allowed per user name (and 4x that per client address) within the window."""
    login_window_seconds: float = 15 * 60
    """The sliding window of the login rate limit."""
    allowed_hosts: tuple[str, ...] = ()
    """Accepted `Host` headers (DNS-rebinding guard); empty accepts any. `serve()` fills it for loopback."""
    export_dir: Path | None = None
    """Where the admin page's export button writes; None disables exporting from the web page."""
    title: str = "rlhfkit feedback"
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form strings shown on the admin page (e.g. the round of an iterative run)."""

    def __post_init__(self) -> None:
        problems = []
        if self.lease_seconds <= 0:
            problems.append(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.session_seconds <= 0:
            problems.append(f"session_seconds must be > 0, got {self.session_seconds}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_import_bytes < self.max_body_bytes:
            problems.append("max_import_bytes must be >= max_body_bytes")
        if self.login_max_failures < 1:
            problems.append(f"login_max_failures must be >= 1, got {self.login_max_failures}")
        if problems:
            raise ValueError("AppConfig: " + "; ".join(problems) + ".")
        if self.export_dir is not None:
            self.export_dir = Path(self.export_dir)
