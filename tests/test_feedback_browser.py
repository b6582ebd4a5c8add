"""A real browser (Debian's Chromium driven by Playwright): log in, label a pair, rank K, give a thumbs down,
admin stats count them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from feedback_helpers import PASSWORDS, fast_scrypt, seeded_db  # noqa: F401  (fast_scrypt: autouse fixture)

from rlhfkit.feedback import commands

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PAYLOAD = '<script>alert("xss")</script><img src=x onerror="alert(2)">'


@pytest.fixture
def browser():
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium; scripts/install_sysdeps.sh installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else
                                                                      shutil.which("chromium")),
                                                  args=CHROMIUM_ARGS, headless=True)
        except Exception as err:  # e.g. a Chromium too far from this Playwright's protocol version
            pytest.skip(f"Chromium would not start under Playwright: {err}")
        try:
            yield launched
        finally:
            launched.close()


def _log_in(page, base_url: str, name: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("button:has-text('Log in')")


@pytest.mark.slow
def test_browser_labels_a_pair_ranks_k_and_admin_stats_count_them(tmp_path, browser):
    rows = [{"prompt": "Which greeting is better?", "responses": ["Hello there!", PAYLOAD]},
            {"prompt": "Rank these answers to 2+2.", "responses": ["4", "four", "5"]},
            {"prompt": "Is this a good answer to 2+2?", "responses": [PAYLOAD + " 5"], "kind": "thumbs"}]
    url = seeded_db(tmp_path, rows, overlap=1)
    with commands.start_server(url) as server:
        context = browser.new_context()
        page = context.new_page()
        dialogs, console_errors = [], []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("console", lambda msg: console_errors.append(f"{msg.text} {msg.location}")
                if msg.type == "error" else None)

        _log_in(page, server.url, "ann1")
        assert page.url.endswith("/annotate")
        page.click("button:has-text('Next item')")
        labelled = []
        for _ in range(3):
            page.wait_for_selector("section.prompt")
            if page.locator("input[name=choice][value=down]").count():
                assert PAYLOAD in page.inner_text("body")  # shown as text, not run
                page.check("input[name=choice][value=down]")
                page.check("input[name=flag][value='0:untruthful']")
                labelled.append("thumbs")
            elif page.locator("input[name=choice]").count():
                assert PAYLOAD in page.inner_text("body")  # shown as text, not run
                page.check("input[name=choice][value=A]")
                page.check("input[name=flag][value='1:harmful']")
                labelled.append("pair")
            else:
                for slot, rank in enumerate(["2", "1", "3"]):
                    page.select_option(f"select[name=rank_{slot}]", rank)
                labelled.append("rank")
            page.fill("textarea[name=note]", "checked in a browser")
            page.click("button:has-text('Submit and next')")
        page.wait_for_selector("text=Nothing else is waiting for you")
        assert sorted(labelled) == ["pair", "rank", "thumbs"]
        assert dialogs == []  # no script from the imported text ever ran
        page.click("button:has-text('Log out')")

        _log_in(page, server.url, "admin")
        page.goto(f"{server.url}/admin/stats")
        assert page.inner_text("td.judgments-pair") == "1"
        assert page.inner_text("td.judgments-rank") == "1"
        assert page.inner_text("td.judgments-thumbs") == "1"
        assert page.inner_text("td.judgments-all") == "3"
        assert "ann1" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "admin_stats.png"), full_page=True)
        assert console_errors == []  # no CSP violation or missing resource
        context.close()
    stats = commands.stats(url)
    assert stats["progress"]["judgments"] == 3 and stats["annotators"]["ann1"]["judgments"] == 3
    assert stats["annotators"]["ann1"]["thumbs_up_rate"] == 0.0
