"""Shared set-up for the feedback-app tests: a seeded database, logged-in HTTP sessions, candidates."""

from __future__ import annotations

import atexit
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback import commands, security
from rlhfkit.feedback.config import AppConfig
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.server import create_app

PASSWORDS = {"admin": "admin-secret-pw", "ann1": "ann1-secret-pw", "ann2": "ann2-secret-pw",
             "ann3": "ann3-secret-pw"}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    """Cheap password hashes (N = 2**10) so the HTTP tests do not spend seconds in scrypt;
    the real cost is tested separately. Import this fixture into a test module to apply it."""
    monkeypatch.setattr(security, "SCRYPT_LOG2_N", 10)


class FakeClock:
    """A settable clock so lease expiry is tested without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def pair_rows(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"Question {prefix}{i}?",
             "responses": [f"First answer to {prefix}{i}", f"Second answer to {prefix}{i}"]} for i in range(n)]


_TEMPLATES: dict[str, Path] = {}
_TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="rlhfkit-feedback-templates-"))
atexit.register(shutil.rmtree, _TEMPLATE_DIR, True)


def seeded_db(tmp_path: Path, rows: list[Any] | None = None, *, overlap: int = 2,
              users: tuple[str, ...] = ("admin", "ann1", "ann2"), **import_kwargs: Any) -> str:
    """A fresh SQLite database with users (admin is admin, the rest annotators) and imported rows.

    Built once per distinct set-up and copied (a closed SQLite database is one file), which keeps
    the many HTTP tests fast.
    """
    key = hashlib.sha256(json.dumps([rows, overlap, users, import_kwargs], sort_keys=True).encode()).hexdigest()
    target = tmp_path / "feedback.db"
    if key not in _TEMPLATES:
        template = _TEMPLATE_DIR / f"{key}.db"
        _build_db(f"sqlite:///{template}", tmp_path, rows, overlap, users, import_kwargs)
        _TEMPLATES[key] = template
    shutil.copyfile(_TEMPLATES[key], target)
    return f"sqlite:///{target}"


def _build_db(url: str, tmp_path: Path, rows: list[Any] | None, overlap: int, users: tuple[str, ...],
              import_kwargs: dict[str, Any]) -> None:
    commands.init_db(url)
    for name in users:
        commands.create_user(url, name, "admin" if name == "admin" else "annotator", PASSWORDS[name])
    if rows:
        commands.import_items(url, write_jsonl(tmp_path / "candidates.jsonl", rows), overlap=overlap,
                              **import_kwargs)


def make_client(url: str, clock: FakeClock | None = None, *, https: bool = False, **config: Any) -> TestClient:
    db = Database.open(url, clock=clock) if clock else None
    base_url = "https://testserver" if https else "http://testserver"
    return TestClient(create_app(AppConfig(db_url=url, **config), db=db), base_url=base_url)


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no csrf_token field"
    return match.group(1)


def web_login(client: TestClient, name: str, password: str | None = None) -> str:
    """Log in through the HTML form; returns the session's CSRF token (from the next page)."""
    page = client.get("/login")
    response = client.post("/login", data={"name": name, "password": password or PASSWORDS[name],
                                           "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/annotate").text)


def api_login(client: TestClient, name: str) -> str:
    """Log in through the JSON API; returns the CSRF token for X-CSRF-Token."""
    response = client.post("/api/login", json={"name": name, "password": PASSWORDS[name]})
    assert response.status_code == 200, response.text
    return response.json()["csrf_token"]


def api_next(client: TestClient, csrf: str) -> dict | None:
    response = client.post("/api/next", json={}, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    return response.json()["task"]


def api_submit(client: TestClient, csrf: str, assignment_id: str, **answer: Any):
    return client.post(f"/api/assignments/{assignment_id}", json=answer, headers={"X-CSRF-Token": csrf})
