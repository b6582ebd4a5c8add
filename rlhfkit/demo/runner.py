"""Stage bookkeeping for ``rlhfkit demo``: headers, timing, reuse of finished stages, resume of killed ones.

Each stage owns the folder ``<out>/<NN>-<name>/`` and a manifest ``stage.json`` in it:

- written with ``"status": "running"`` and the stage's *fingerprint* when the stage starts;
- rewritten atomically with ``"status": "complete"``, the time and the stage's summary as its **last** act.

On a re-run, a complete stage with the same fingerprint is reused at once (its summary is read back); a
running one (the process was killed) runs again in its folder — training stages resume from their last
checkpoint, the others start over; a stage whose fingerprint changed (other settings, or an upstream stage
re-made) gets a fresh folder. The fingerprint hashes the stage's settings *and* its upstream stages'
fingerprints, so a change flows downstream and nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "stage.json"
MANIFEST_FORMAT = 1


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass
class StageResult:
    name: str
    folder: Path
    fingerprint: str
    summary: dict[str, Any]
    seconds: float  # time the stage took when it ran (for a reused stage: the original run's)
    reused: bool


@dataclass
class Runner:
    """Runs the demo's stages in order under ``out``; ``results`` keeps each stage's :class:`StageResult`."""

    out: Path
    total: int
    results: dict[str, StageResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def header(self, number: int, title: str) -> None:
        line = f"[{number}/{self.total}] {title}"
        print(f"\n{'━' * 78}\n{line}\n{'━' * 78}", file=sys.stderr, flush=True)

    def stage(self, number: int, name: str, title: str, settings: Any, upstream: tuple[str, ...],
              work: Callable[[Path], dict[str, Any]]) -> StageResult:
        """Run (or reuse) stage ``name``: ``work(folder) -> summary`` (JSON-able)."""
        self.header(number, title)
        folder = self.out / f"{number:02d}-{name}"
        fp = fingerprint(name, settings, [self.results[u].fingerprint for u in upstream])
        manifest = read_json(folder / MANIFEST)
        if manifest and manifest.get("fingerprint") == fp and manifest.get("status") == "complete":
            say(f"{name}: reusing the finished stage in {folder} (ran in {manifest['seconds']:.0f} s)")
            result = StageResult(name, folder, fp, manifest["summary"], manifest["seconds"], True)
            self.results[name] = result
            return result
        if manifest and manifest.get("fingerprint") != fp:
            say(f"{name}: settings or an upstream stage changed since {folder} was made; starting it over")
            shutil.rmtree(folder)
        elif manifest:
            say(f"{name}: resuming the unfinished stage in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(folder / MANIFEST, {"format": MANIFEST_FORMAT, "stage": name, "status": "running",
                                                  "fingerprint": fp})
        started = time.perf_counter()
        summary = work(folder)
        seconds = time.perf_counter() - started
        write_json_atomically(folder / MANIFEST, {"format": MANIFEST_FORMAT, "stage": name, "status": "complete",
                                                  "fingerprint": fp, "seconds": seconds, "summary": summary})
        say(f"{name}: done in {seconds:.1f} s")
        result = StageResult(name, folder, fp, summary, seconds, False)
        self.results[name] = result
        return result

    def times(self) -> dict[str, dict[str, Any]]:
        """``{stage: {"seconds", "reused"}}`` in run order."""
        return {name: {"seconds": round(r.seconds, 1), "reused": r.reused} for name, r in self.results.items()}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def say(message: str) -> None:
    from rlhfkit.engine.metrics_log import say as loop_say

    loop_say(message)
