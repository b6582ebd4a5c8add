"""Real server, real threads: the HTTP client, 8 annotators x 100 submissions (pairs and thumbs items), and the
login rate limit under concurrent guesses across two server processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from feedback_helpers import PASSWORDS, fast_scrypt, pair_rows, seeded_db, write_jsonl  # noqa: F401  (autouse)

from rlhfkit.feedback import commands, security
from rlhfkit.feedback import schema as t
from rlhfkit.feedback.client import FeedbackClient, FeedbackHTTPError
from rlhfkit.feedback.db import Database

PG_BIN = Path("/usr/lib/postgresql/15/bin")
N_CLIENTS, N_SUBMISSIONS, OVERLAP = 8, 100, 2


def test_client_round_trip_against_a_live_server(tmp_path):
    rows = [*pair_rows(2), {"prompt": "rank", "responses": ["x", "y", "z"]}, {"prompt": "write", "kind": "demo"}]
    url = seeded_db(tmp_path, rows, overlap=1)
    with commands.start_server(url) as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = FeedbackClient(server.url)
        with pytest.raises(FeedbackHTTPError) as info:
            client.next_task()
        assert info.value.status == 401
        assert client.login("ann1", PASSWORDS["ann1"]) == {"name": "ann1", "role": "annotator"}
        kinds = []
        while (task := client.next_task()) is not None:
            kinds.append(task.kind)
            answer = {"pair": {"choice": "B", "flags": {0: ["untruthful"]}}, "rank": {"ranking": [2, 0, 1]},
                      "demo": {"response": "An ideal answer."}}[task.kind]
            assert client.submit(task.assignment_id, note="ok", **answer) > 0
            with pytest.raises(FeedbackHTTPError) as info:
                client.submit(task.assignment_id, **answer)
            assert info.value.status == 409
        assert sorted(kinds) == ["demo", "pair", "pair", "rank"]
        with pytest.raises(FeedbackHTTPError) as info:
            client.stats()
        assert info.value.status == 403
        admin = FeedbackClient(server.url)
        admin.login("admin", PASSWORDS["admin"])
        assert admin.stats()["progress"]["judgments"] == 4
        client.logout()
        with pytest.raises(FeedbackHTTPError):
            client.next_task()


def _annotate(base_url: str, name: str, barrier: threading.Barrier, results: dict, errors: list) -> None:
    try:
        client = FeedbackClient(base_url, timeout=120)
        client.login(name, PASSWORDS.get(name, f"{name}-secret-pw"))
        rng = random.Random(name)
        done: list[tuple[str, int]] = []
        barrier.wait()
        while len(done) < N_SUBMISSIONS:
            task = client.next_task()
            if task is None:
                break
            choices = ["up", "down"] if task.kind == "thumbs" else ["A", "B", "tie", "both_bad"]
            judgment_id = client.submit(task.assignment_id, choice=rng.choice(choices))
            done.append((task.assignment_id, judgment_id))
            if len(done) % 25 == 0:  # a replay of the same submission must be refused, not stored twice
                try:
                    client.submit(task.assignment_id, choice=choices[0])
                    errors.append(f"{name}: replay accepted")
                except FeedbackHTTPError as err:
                    if err.status != 409:
                        errors.append(f"{name}: replay gave {err.status}")
        results[name] = done
    except Exception as err:  # reported by the main thread
        errors.append(f"{name}: {type(err).__name__}: {err}")


def _hammer(url: str, work_dir: Path) -> None:
    names = [f"w{i}" for i in range(N_CLIENTS)]
    for name in names:
        commands.create_user(url, name, "annotator", f"{name}-secret-pw")
    n_items = N_CLIENTS * N_SUBMISSIONS // OVERLAP + 20
    # every third item a thumbs item: one response, answered up or down
    thumbs = [{"id": f"t{i}", "prompt": f"Thumbs {i}?", "responses": [f"Only answer {i}"], "kind": "thumbs"}
              for i in range(n_items // 3)]
    candidates = write_jsonl(work_dir / "hammer.jsonl", pair_rows(n_items - len(thumbs)) + thumbs)
    commands.import_items(url, candidates, overlap=OVERLAP)
    results: dict[str, list[tuple[str, int]]] = {}
    errors: list[str] = []
    barrier = threading.Barrier(N_CLIENTS)
    with commands.start_server(url) as server:
        threads = [threading.Thread(target=_annotate, args=(server.url, n, barrier, results, errors)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    assert errors == []
    assert {name: len(done) for name, done in results.items()} == {name: N_SUBMISSIONS for name in names}
    returned = {judgment_id: assignment for done in results.values() for assignment, judgment_id in done}
    assert len(returned) == N_CLIENTS * N_SUBMISSIONS  # no judgment id handed out twice
    db = Database.open(url)
    try:
        with db.read() as conn:
            rows = conn.execute(sa.select(t.judgments.c.id, t.judgments.c.assignment_id, t.judgments.c.item_id,
                                          t.judgments.c.user_id, t.assignments.c.user_id.label("owner"))
                                .join(t.assignments, t.assignments.c.id == t.judgments.c.assignment_id)).all()
            kinds = Counter(conn.execute(sa.select(t.items.c.kind)
                                         .join(t.judgments, t.judgments.c.item_id == t.items.c.id)).scalars())
    finally:
        db.dispose()
    assert {r.id: r.assignment_id for r in rows} == returned  # nothing lost, nothing extra
    assert all(r.user_id == r.owner for r in rows)
    assert len({(r.item_id, r.user_id) for r in rows}) == len(rows)  # nobody judged an item twice
    assert max(Counter(r.item_id for r in rows).values()) <= OVERLAP  # overlap never exceeded
    assert kinds["thumbs"] > 0 and kinds["pair"] > 0 and sum(kinds.values()) == len(rows)


@pytest.mark.slow
def test_eight_clients_hundred_submissions_sqlite(tmp_path):
    _hammer(seeded_db(tmp_path), tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL 15 server on a Unix socket in a temporary folder."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing; scripts/install_sysdeps.sh "
                    "installs it as root)")
    pytest.importorskip("psycopg", reason="psycopg (psycopg[binary]) is not installed")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser, cannot start PostgreSQL as another user")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "rlhfkit", "--auth=trust", "-E", "UTF8", "--no-locale")
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses='' -c max_connections=200 -c fsync=off", "start")
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL 15: {err.stderr.decode(errors='replace')[-300:]}")
    try:
        yield f"postgresql://rlhfkit@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_eight_clients_hundred_submissions_postgresql(postgres_url, tmp_path):
    assert commands.init_db(postgres_url) is True
    for name in ("admin", "ann1"):
        commands.create_user(postgres_url, name, "admin" if name == "admin" else "annotator", PASSWORDS[name])
    _hammer(postgres_url, tmp_path)
    stats = commands.stats(postgres_url)
    assert stats["progress"]["judgments"] == N_CLIENTS * N_SUBMISSIONS


# --- the login rate limit under concurrent guesses (issue 19, item 1) ------------------------------------

N_GUESSES, MAX_FAILURES = 60, 5


def _serve_in_subprocess(url: str, work_dir: Path) -> tuple[subprocess.Popen, str]:
    """`rlhfkit annotate serve` in its own process: the limit must hold across server processes."""
    port = _free_port()
    log = (work_dir / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "annotate", "serve", "--db", url,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server process exited: {(work_dir / f'serve-{port}.log').read_text()[-500:]}")
        try:
            urllib.request.urlopen(base + "/login", timeout=2).close()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server process did not start in 60 s")


def _guess_all_at_once(base_urls: list[str], guesses: list[tuple[str, str]]) -> list[int]:
    """One client per guess, alternating between the servers, released together; the HTTP status of each."""
    statuses: list[int] = [0] * len(guesses)
    barrier = threading.Barrier(len(guesses))

    def guess(index: int, name: str, password: str) -> None:
        client = FeedbackClient(base_urls[index % len(base_urls)], timeout=300)
        barrier.wait()
        try:
            client.login(name, password)
            statuses[index] = 200
        except FeedbackHTTPError as err:
            statuses[index] = err.status

    threads = [threading.Thread(target=guess, args=(i, n, p)) for i, (n, p) in enumerate(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return statuses


def _failed_checks(url: str) -> Counter:
    """Audit rows of login attempts whose password check failed, by user name (what the limit counts)."""
    db = Database.open(url)
    try:
        with db.read() as conn:
            rows = conn.execute(sa.select(t.audit_log.c.subject).where(t.audit_log.c.event == "login_failed")).all()
    finally:
        db.dispose()
    return Counter(r.subject for r in rows)


def _rate_limit_holds_under_concurrent_guesses(url: str, work_dir: Path, monkeypatch) -> None:
    # The real scrypt cost: the slow password check is the window the guesses race through.
    monkeypatch.setattr(security, "SCRYPT_LOG2_N", 15)
    commands.create_user(url, "victim", "annotator", "the-right-password")
    proc, other = _serve_in_subprocess(url, work_dir)
    try:
        with commands.start_server(url, login_max_failures=MAX_FAILURES) as server:
            # 1. 60 simultaneous guesses at one user, the right password among them (#30).
            guesses = [("victim", f"wrong-guess-{i:03d}") for i in range(N_GUESSES)]
            guesses[29] = ("victim", "the-right-password")
            statuses = _guess_all_at_once([server.url, other], guesses)
            assert set(statuses) <= {200, 401, 429}, Counter(statuses)
            # the limit counts failures: at most 5 wrong guesses checked (a success is not one)
            assert statuses.count(401) <= MAX_FAILURES and statuses.count(200) <= 1, Counter(statuses)
            assert _failed_checks(url)["victim"] == statuses.count(401)
            # 2. 60 more at 12 other names from the same address: the address allows 4x as many in all.
            guesses = [(f"someone{i % 12}", f"wrong-guess-{i:03d}") for i in range(N_GUESSES)]
            statuses = _guess_all_at_once([server.url, other], guesses)
            assert set(statuses) <= {401, 429}, Counter(statuses)
            assert sum(_failed_checks(url).values()) <= 4 * MAX_FAILURES
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_login_rate_limit_holds_under_concurrent_guesses_sqlite(tmp_path, monkeypatch):
    _rate_limit_holds_under_concurrent_guesses(seeded_db(tmp_path), tmp_path, monkeypatch)


@pytest.mark.slow
def test_login_rate_limit_holds_under_concurrent_guesses_postgresql(postgres_url, tmp_path, monkeypatch):
    assert commands.init_db(postgres_url) is True
    _rate_limit_holds_under_concurrent_guesses(postgres_url, tmp_path, monkeypatch)
