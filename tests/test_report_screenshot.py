"""report.html in headless Chromium (scripts/screenshot_report.py): the table and every plot render; a page
without them fails the check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from test_report import sample_report
except ImportError:  # pragma: no cover - run from the repository root
    from tests.test_report import sample_report

from rlhfkit.evaluate.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot_report.py"
CHROMIUM = next((c for c in ("/usr/bin/chromium", shutil.which("chromium")) if c and Path(c).exists()), None)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")]


def run_script(*args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    return done.returncode, json.loads(done.stdout)


def report_html(tmp_path: Path) -> Path:
    metrics = [{"step": s, "objective/rm_score": 0.1 * s, "objective/kl": 0.2 * s} for s in range(1, 9)]
    rollout = [{"step": s, "proxy": 0.1 * s, "gold": 0.5 - 0.05 * s, "kl": 0.2 * s} for s in range(1, 9)]
    checks = [{"step": s, "proxy": 0.1 * s, "judge": 0.5 - 0.05 * s, "kl": 0.2 * s} for s in (4, 8)]
    return write_report(tmp_path, sample_report(), ppo_metrics=metrics, rollout_gold=rollout, checks=checks)["html"]


@pytest.mark.parametrize("driver", ["playwright", "cli"])
def test_report_renders_its_table_and_plots(tmp_path, driver):
    from PIL import Image

    html = report_html(tmp_path)
    shot = tmp_path / f"{driver}.png"
    args = [str(html), "--out", str(shot), "--check"] + (["--no-playwright"] if driver == "cli" else [])
    code, summary = run_script(*args)
    assert code == 0, summary["problems"]
    assert summary["table_rows"] == 5 and summary["images"] == 4
    if driver == "playwright":
        assert summary["images_rendered"] == 4  # every embedded PNG decoded in the browser
    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height >= 1500  # the whole report, not an error page


def test_check_fails_on_a_page_without_table_or_plots(tmp_path):
    page = tmp_path / "empty.html"
    page.write_text("<!DOCTYPE html><html><body><p>nothing here</p></body></html>")
    code, summary = run_script(str(page), "--out", str(tmp_path / "empty.png"), "--check")
    assert code == 1 and len(summary["problems"]) >= 2
