"""Plain functions behind `rlhfkit annotate init|user|import|serve|stats|export` (and `rlhfkit iterate`).

Each takes a database URL (`sqlite:///feedback.db`, a bare file path, or `postgresql://...`),
opens it, does one thing, and closes it. `start_server` runs the app on a background thread
for programs that drive it through HTTP (the world's simulated annotators).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.feedback import auth
from rlhfkit.feedback import export as export_mod
from rlhfkit.feedback.config import AppConfig
from rlhfkit.feedback.db import Database, init_schema
from rlhfkit.feedback.importer import ImportReport, import_candidates, import_file
from rlhfkit.feedback.stats import collect_stats

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def _with_db(db_url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    db = Database.open(db_url)
    try:
        return fn(db, *args, **kwargs)
    finally:
        db.dispose()


def init_db(db_url: str) -> bool:
    """Create the tables (idempotent); True if the database was new. Creates no user."""
    db = Database.open(db_url, check=False)
    try:
        return init_schema(db)
    finally:
        db.dispose()


def create_user(db_url: str, name: str, role: str, password: str) -> auth.User:
    """Create an `admin` or `annotator` (password: 10+ characters, not the name)."""
    return _with_db(db_url, auth.create_user, name, role, password)


def set_user_active(db_url: str, name: str, active: bool) -> None:
    _with_db(db_url, auth.set_active, name, active)


def set_password(db_url: str, name: str, password: str) -> None:
    _with_db(db_url, auth.set_password, name, password)


def import_items(db_url: str, path: str | Path, overlap: int = 2, *, gold_overlap: int | None = None,
                 on_duplicate: str = "error", batch: str | None = None) -> ImportReport:
    """Import a candidates JSON Lines file, all-or-nothing (ImportValidationError lists every problem)."""
    return _with_db(db_url, import_file, path, overlap=overlap, gold_overlap=gold_overlap,
                    on_duplicate=on_duplicate, batch=batch)


def import_rows(db_url: str, rows: list[dict[str, Any]], overlap: int = 2, *, source: str = "rows",
                **kwargs: Any) -> ImportReport:
    """Import candidate dicts (same keys as a file's lines) through the same validation as a file."""
    raw = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return _with_db(db_url, import_candidates, raw, source, overlap=overlap, **kwargs)


def stats(db_url: str) -> dict[str, Any]:
    """Progress, agreement and per-annotator statistics (strict JSON: undefined values are None)."""
    return _with_db(db_url, collect_stats)


def export(db_url: str, out_dir: str | Path, *, min_votes: int = 2, eval_fraction: float = 0.0,
           include_gold: bool = False, ranking_aggregate: str = "borda",
           batches: list[str] | None = None) -> dict[str, Any]:
    """Write the training files and `manifest.json` into `out_dir` atomically; returns the manifest."""
    options = export_mod.ExportOptions(min_votes=min_votes, eval_fraction=eval_fraction,
                                       include_gold=include_gold, ranking_aggregate=ranking_aggregate,
                                       batches=batches)
    return _with_db(db_url, export_mod.export, out_dir, options)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_config(db_url: str, host: str, **overrides: Any) -> AppConfig:
    """An AppConfig for serving on `host`; on loopback the Host header must name loopback too."""
    if "allowed_hosts" not in overrides and is_loopback(host):
        overrides["allowed_hosts"] = ("127.0.0.1", "localhost", "[::1]", "::1")
    return AppConfig(db_url=db_url, **overrides)


def _uvicorn_server(config: AppConfig, host: str, port: int) -> Any:
    import uvicorn

    from rlhfkit.feedback.server import create_app

    app = create_app(config)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False,
                                         proxy_headers=False, access_log=False))


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8000, **overrides: Any) -> None:
    """Run the app until interrupted. `overrides` are AppConfig fields (export_dir, lease_seconds, ...)."""
    if not is_loopback(host):
        print(f"rlhfkit: listening on {host}, beyond this machine. Put it behind an https reverse proxy "
              "and set secure_cookies=True.", file=sys.stderr)
    config = make_config(db_url, host, **overrides)
    print(f"rlhfkit: annotation app on http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
    _uvicorn_server(config, host, port).run()


@dataclass
class RunningServer:
    """An app served on a background thread; `stop()` shuts it down and waits."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.server.config.app.state.db.dispose()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


def start_server(db_url: str, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 30.0,
                 **overrides: Any) -> RunningServer:
    """Serve on a background thread; port 0 picks a free port (bound here, so no race). Returns when ready."""
    config = make_config(db_url, host, **overrides)
    sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    bound_port = sock.getsockname()[1]
    server = _uvicorn_server(config, host, bound_port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="rlhfkit-feedback",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"The annotation app did not start on {host}:{bound_port}.")
        time.sleep(0.02)
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return RunningServer(url=f"http://{shown}:{bound_port}", server=server, thread=thread)


def configure(parser: Any) -> None:
    """`rlhfkit annotate ...` arguments (see feedback/cli.py)."""
    from rlhfkit.feedback.cli import configure as configure_cli

    configure_cli(parser)


def main(args: Any) -> int:
    """`rlhfkit annotate ...` entry point (see feedback/cli.py)."""
    from rlhfkit.feedback.cli import main as cli_main

    return cli_main(args)
