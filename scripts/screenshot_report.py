"""Screenshot a demo report in headless Chromium and check that it renders its table and plots.

    python scripts/screenshot_report.py runs/demo/report.html                 # -> runs/demo/report.png
    python scripts/screenshot_report.py runs/demo/report.html --out shot.png --check

With Playwright (the ``dev`` extra) driving the system Chromium, the page is loaded, every ``<img>`` must
have decoded (``naturalWidth > 0``) and the results table must have one row per policy; the full page
is saved as a PNG. Without Playwright, Chromium's own ``--screenshot`` takes a fixed-size shot and only
the PNG's existence and contrast can be checked. Prints a JSON summary; ``--check`` exits 1 when a
check fails. No network: the report is self-contained and Chromium runs with networking features off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
POLICY_ROWS = 5  # base, SFT, best-of-N, DPO, PPO


def find_chromium(explicit: str | None) -> str:
    for candidate in (explicit, "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                      shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("no Chromium found; install Debian's chromium or pass --chromium PATH")


def with_playwright(html: Path, out: Path, chromium: str, width: int) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=FLAGS[1:], viewport={"width": width, "height": 900})
        try:
            page = browser.new_page()
            page.goto(html.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            rows = page.evaluate("document.querySelectorAll('table.results tbody tr').length")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return {"driver": "playwright", "images": len(images), "images_rendered": sum(images), "table_rows": rows}


def with_cli(html: Path, out: Path, chromium: str, width: int, height: int) -> dict:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
                        f"--window-size={width},{height}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    text = html.read_text(encoding="utf-8")
    return {"driver": "chromium-cli", "images": text.count("data:image/png;base64,"), "images_rendered": None,
            "table_rows": text.split('class="results"')[1].split("</table>")[0].count("<tr>") - 1
            if 'class="results"' in text else 0}


def contrast(png: Path) -> float:
    """Standard deviation of the grey levels: a blank page is ~0, a page with tables and plots is far above."""
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        return float(ImageStat.Stat(image.convert("L")).stddev[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--out", type=Path, help="PNG to write (default: beside the report)")
    parser.add_argument("--chromium", help="Chromium executable (default: /usr/bin/chromium)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000, help="window height without Playwright")
    parser.add_argument("--no-playwright", action="store_true", help="use Chromium's --screenshot only")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the table and every plot rendered")
    args = parser.parse_args(argv)
    out = args.out or args.html.with_suffix(".png")
    chromium = find_chromium(args.chromium)
    try:
        if args.no_playwright:
            raise ImportError
        import playwright  # noqa: F401

        summary = with_playwright(args.html, out, chromium, args.width)
    except ImportError:
        summary = with_cli(args.html, out, chromium, args.width, args.height)
    summary.update({"screenshot": str(out), "contrast": contrast(out)})
    problems = []
    if summary["table_rows"] != POLICY_ROWS:
        problems.append(f"results table has {summary['table_rows']} rows, expected {POLICY_ROWS}")
    if summary["images"] == 0 or summary["images_rendered"] not in (None, summary["images"]):
        problems.append(f"{summary['images_rendered']} of {summary['images']} plots rendered")
    if summary["contrast"] < 10:
        problems.append(f"the screenshot looks blank (grey-level std {summary['contrast']:.1f})")
    summary["problems"] = problems
    print(json.dumps(summary, indent=2))
    return 1 if args.check and problems else 0


if __name__ == "__main__":
    sys.exit(main())
