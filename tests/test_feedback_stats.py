"""Stats from the database against hand-computed values for a planned set of judgments."""

from __future__ import annotations

import pytest
from feedback_helpers import (  # noqa: F401  (fast_scrypt: autouse fixture)
    FakeClock,
    fast_scrypt,
    make_client,
    pair_rows,
    seeded_db,
    web_login,
)

from rlhfkit.feedback import assign, auth, commands
from rlhfkit.feedback.assign import ScreenAnswer
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.stats import collect_stats

ROWS = [*pair_rows(4), {"id": "g0", "prompt": "Gold?", "responses": ["good", "bad"], "gold": {"best": 0}},
        {"id": "r0", "prompt": "Rank?", "responses": ["x", "y", "z"]}]
# Canonical answers (int = better response, list = ranking) and seconds spent, per annotator.
PLAN = {
    "ann1": {"Question p0?": 0, "Question p1?": 0, "Question p2?": 1, "Question p3?": "tie", "Gold?": 0,
             "Rank?": [0, 1, 2]},
    "ann2": {"Question p0?": 0, "Question p1?": 1, "Question p2?": 1, "Question p3?": "tie", "Gold?": 1,
             "Rank?": [2, 1, 0]},
}
SECONDS = {"ann1": [5, 1, 9, 3, 7, 11], "ann2": [2, 2, 2, 4, 4, 4]}


class _IdentityOrder:
    """Show responses in canonical order so screen position = canonical position."""

    def sample(self, population, k):
        return list(population)[:k]


@pytest.fixture
def planned(tmp_path, monkeypatch):
    monkeypatch.setattr(assign.secrets, "SystemRandom", _IdentityOrder)
    url = seeded_db(tmp_path, ROWS, overlap=2)
    clock = FakeClock()
    db = Database.open(url, clock=clock)
    for name, plan in PLAN.items():
        with db.read() as conn:
            user = auth.get_user(conn, name)
        for seconds in SECONDS[name]:
            task = assign.lease_next(db, user, lease_seconds=600)
            clock.advance(seconds)
            answer = plan[task.prompt]
            screen = (ScreenAnswer(ranking=answer) if isinstance(answer, list) else
                      ScreenAnswer(choice="AB"[answer] if isinstance(answer, int) else answer))
            assign.submit(db, user, task.assignment_id, screen)
        assert assign.lease_next(db, user, lease_seconds=600) is None
    yield url, db
    db.dispose()


def test_stats_match_hand_computed_values(planned):
    url, db = planned
    stats = collect_stats(db)
    progress = stats["progress"]
    assert (progress["items"], progress["complete"], progress["judgments"], progress["slots_left"]) == (6, 6, 12, 0)
    assert progress["by_kind"]["pair"]["gold_items"] == 1 and progress["active_leases"] == 0
    # Ordinary pair items: ann1 = [0, 0, 1, tie], ann2 = [0, 1, 1, tie]. p_o = 3/4;
    # p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16; kappa = (12/16 - 5/16) / (11/16) = 7/11.
    (pair,) = stats["agreement"]["pairs"]
    assert pair["raters"] == ["ann1", "ann2"] and pair["n"] == 4
    assert pair["percent_agreement"] == 0.75 and pair["cohens_kappa"] == pytest.approx(7 / 11, abs=1e-4)
    # Alpha, 2 raters x 4 units: coincidences o(0,0)=2, o(0,1)=o(1,0)=1, o(1,1)=2, o(tie,tie)=2, n=8;
    # n_0 = 3, n_1 = 3, n_tie = 2; D_o = 2/8; D_e = (3*3 + 3*2 + 3*2) * 2 / (8*7) = 42/56; alpha = 1 - (1/4)/(3/4).
    assert stats["agreement"]["krippendorff_alpha"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["agreement"]["mean_kendall_tau"] == -1.0
    ann1, ann2 = stats["annotators"]["ann1"], stats["annotators"]["ann2"]
    assert (ann1["gold_accuracy"], ann2["gold_accuracy"]) == (1.0, 0.0)
    # Decisive pair judgments incl. gold: ann1 picked canonical 0 = left in 3 of 4, ann2 in 1 of 4.
    assert (ann1["left_choice_rate"], ann2["left_choice_rate"]) == (0.75, 0.25)
    assert (ann1["first_shown_top_rate"], ann2["first_shown_top_rate"]) == (1.0, 0.0)
    assert ann1["tie_rate"] == 0.2 and ann1["both_bad_rate"] == 0.0
    assert (ann1["median_seconds"], ann2["median_seconds"]) == (6.0, 3.0)
    assert ann1["by_kind"] == {"pair": 5, "rank": 1}


def test_stats_page_json_and_command_agree(planned):
    url, db = planned
    client = make_client(url)
    web_login(client, "admin")
    from_http = client.get("/admin/stats.json").json()
    from_command = commands.stats(url)
    from_http.pop("generated_at")
    from_command.pop("generated_at")
    assert from_http == from_command
    page = client.get("/admin/stats").text
    assert "0.636" in page and "0.667" in page and "ann2" in page


def test_import_rows_and_export_one_batch(tmp_path):
    url = seeded_db(tmp_path)
    commands.import_rows(url, pair_rows(2, "old"), overlap=1, batch="round-1")
    report = commands.import_rows(url, pair_rows(2, "new"), overlap=1, batch="round-2")
    assert report.batch == "round-2" and report.imported == 2
    db = Database.open(url)
    with db.read() as conn:
        user = auth.get_user(conn, "ann1")
    while (task := assign.lease_next(db, user, lease_seconds=60)) is not None:
        assign.submit(db, user, task.assignment_id, ScreenAnswer(choice="A"))
    db.dispose()
    manifest = commands.export(url, tmp_path / "out", min_votes=1, batches=["round-2"])
    prompts = [line for line in (tmp_path / "out" / "preferences.train.jsonl").read_text().splitlines()]
    assert len(prompts) == 2 and all("Question new" in p for p in prompts)
    assert manifest["filters"]["batches"] == ["round-2"] and manifest["counts"]["judgments"] == 2
    with pytest.raises(ValueError, match="batch"):
        commands.import_rows(url, pair_rows(1, "x"), batch="")
