"""The thumbs up / down task: import, answers through the pages and the API, agreement on the binary label
(hand-computed), the export as unpaired rows, and KTO trained on that export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from feedback_helpers import (  # noqa: F401  (fast_scrypt: autouse fixture)
    api_login,
    api_next,
    api_submit,
    csrf_of,
    fast_scrypt,
    make_client,
    seeded_db,
    web_login,
    write_jsonl,
)

from rlhfkit.data.unpaired import load_unpaired_rows
from rlhfkit.feedback import assign, auth, commands
from rlhfkit.feedback.assign import ScreenAnswer
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.importer import ImportValidationError
from rlhfkit.worlds import FAMILY_BEHAVIOURS

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"id": f"t{i}", "prompt": f"Thumbs {i}?", "responses": [f"answer {i}"], "kind": "thumbs"} for i in range(3)]
ROWS.append({"id": "tg", "prompt": "Gold thumbs?", "responses": ["made up"], "kind": "thumbs", "gold": {"good": False}})
PLAN = {"ann1": {"Thumbs 0?": "up", "Thumbs 1?": "up", "Thumbs 2?": "down", "Gold thumbs?": "down"},
        "ann2": {"Thumbs 0?": "up", "Thumbs 1?": "down", "Thumbs 2?": "down", "Gold thumbs?": "up"}}


def test_import_checks_thumbs_rows(tmp_path):
    url = seeded_db(tmp_path)
    bad = [{"prompt": "a", "responses": ["x", "y"], "kind": "thumbs"},
           {"prompt": "b", "responses": ["x"], "kind": "thumbs", "gold": {"best": 0}},
           {"prompt": "c", "responses": ["x"]}]
    with pytest.raises(ImportValidationError) as info:
        commands.import_items(url, write_jsonl(tmp_path / "bad.jsonl", bad))
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [
        f"{tmp_path / 'bad.jsonl'}, line 1, field kind", f"{tmp_path / 'bad.jsonl'}, line 2, field gold",
        f"{tmp_path / 'bad.jsonl'}, line 3, field responses"]
    assert "exactly 1 response, got 2" in info.value.problems[0]
    report = commands.import_items(url, write_jsonl(tmp_path / "ok.jsonl", ROWS))
    assert report.by_kind == {"thumbs": 4} and report.gold == 1


def test_thumbs_answers_through_the_page_and_the_api(tmp_path):
    url = seeded_db(tmp_path, ROWS[:1], overlap=2)
    with make_client(url) as client:
        csrf = web_login(client, "ann1")
        page = client.post("/annotate/next", data={"csrf_token": csrf}, follow_redirects=True)
        assert 'value="up"' in page.text and 'value="down"' in page.text and "answer " in page.text
        assignment = str(page.url).rsplit("/", 1)[1]
        refused = client.post(f"/annotate/{assignment}", data={"csrf_token": csrf_of(page.text), "choice": "A"})
        assert refused.status_code == 422 and "up, down" in refused.text
        saved = client.post(f"/annotate/{assignment}", data={"csrf_token": csrf, "choice": "down"},
                            follow_redirects=False)
        assert saved.status_code == 303
    with make_client(url) as client:
        csrf = api_login(client, "ann2")
        task = api_next(client, csrf)
        assert task["kind"] == "thumbs" and len(task["responses"]) == 1
        assert api_submit(client, csrf, task["assignment_id"], choice="tie").status_code == 422
        assert api_submit(client, csrf, task["assignment_id"], choice="up").status_code == 200
    stats = commands.stats(url)
    assert stats["annotators"]["ann1"]["thumbs_up_rate"] == 0.0 and stats["annotators"]["ann2"]["thumbs_up_rate"] == 1.0


@pytest.fixture
def judged(tmp_path):
    url = seeded_db(tmp_path, ROWS, overlap=2)
    db = Database.open(url)
    for name, plan in PLAN.items():
        with db.read() as conn:
            user = auth.get_user(conn, name)
        while (task := assign.lease_next(db, user, lease_seconds=600)) is not None:
            assign.submit(db, user, task.assignment_id, ScreenAnswer(choice=plan[task.prompt]))
    yield url
    db.dispose()


def test_agreement_on_the_binary_label_matches_hand_computed_values(judged):
    stats = commands.stats(judged)
    agreement = stats["agreement"]
    # ordinary items: (up, up), (up, down), (down, down). p_o = 2/3; each annotator says up on
    # 2/3 and 1/3: p_e = 2/3·1/3 + 1/3·2/3 = 4/9, κ = (2/3 − 4/9)/(1 − 4/9) = 0.4. Krippendorff's α:
    # o_uu = o_dd = 2, o_ud = o_du = 1, n_u = n_d = 3, n = 6: D_o = 2/6, D_e = 2·3·3/(6·5) = 0.6, α = 4/9.
    assert agreement["thumbs_pairs"] == [{"raters": ["ann1", "ann2"], "n": 3, "percent_agreement": 0.6667,
                                          "cohens_kappa": 0.4}]
    assert agreement["thumbs_percent_agreement"] == 0.6667
    assert agreement["thumbs_krippendorff_alpha"] == pytest.approx(4 / 9, abs=1e-4)
    assert agreement["pairs"] == []  # pair agreement is not mixed with thumbs labels
    ann1, ann2 = stats["annotators"]["ann1"], stats["annotators"]["ann2"]
    assert (ann1["gold_accuracy"], ann2["gold_accuracy"]) == (1.0, 0.0)  # gold: {"good": false}
    assert (ann1["thumbs_up_rate"], ann2["thumbs_up_rate"]) == (0.5, 0.5)  # gold item included
    assert stats["progress"]["by_kind"]["thumbs"]["judgments"] == 8


def test_export_writes_majority_labels_as_unpaired_rows(judged, tmp_path):
    manifest = commands.export(judged, tmp_path / "out", min_votes=2)
    rows = [json.loads(x) for x in (tmp_path / "out" / "unpaired.train.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "Thumbs 0?", "completion": "answer 0", "label": True},
                    {"prompt": "Thumbs 2?", "completion": "answer 2", "label": False}]
    assert manifest["counts"]["thumbs_items_without_majority"] == 1  # Thumbs 1: one up, one down
    assert manifest["counts"]["gold_items_left_out"] == 1
    assert len(load_unpaired_rows(tmp_path / "out" / "unpaired.train.jsonl")) == 2


def test_the_thumbs_export_trains_kto(tmp_path):
    """Thumbs labelled through the app, exported, and `rlhfkit kto` trained on the export file."""
    from rlhfkit.cli import main as cli

    try:
        from test_dpo_common import learnable_rows, model_dir, read_metrics
        from test_preference_family import mean_logps
    except ImportError:  # tests/ imported as a package
        from tests.test_dpo_common import learnable_rows, model_dir, read_metrics
        from tests.test_preference_family import mean_logps
    from rlhfkit.models.load import load_causal_lm, load_tokenizer

    items = [{"prompt": r["prompt"], "responses": [r[key]], "kind": "thumbs"}
             for r in learnable_rows(16, seed=3) for key in ("chosen", "rejected")]
    url = seeded_db(tmp_path, items, overlap=1)
    db = Database.open(url)
    with db.read() as conn:
        user = auth.get_user(conn, "ann1")
    good = {r["chosen"] for r in learnable_rows(16, seed=3)}
    while (task := assign.lease_next(db, user, lease_seconds=600)) is not None:
        assign.submit(db, user, task.assignment_id, ScreenAnswer(choice="up" if task.responses[0] in good else "down"))
    db.dispose()
    commands.export(url, tmp_path / "export", min_votes=1)
    train_file = tmp_path / "export" / "unpaired.train.jsonl"
    assert len(load_unpaired_rows(train_file)) == 32
    args = ["kto", "--config", str(REPO / "configs" / "kto.yaml"), f"model.path={model_dir(tmp_path)}",
            f"data.train_file={train_file}", f"train.output_dir={tmp_path / 'kto'}", "train.progress_bar=false",
            "train.per_device_batch_size=8", "train.num_epochs=4", "train.lr=3e-3", "beta=0.5", "data.max_length=64",
            "data.max_prompt_length=32", f"reference_cache_dir={tmp_path / 'cache'}"]
    assert cli(args) == 0
    rows = read_metrics(tmp_path / "kto")
    assert rows[-1]["train/samples_seen"] == 4 * 32
    # the thumbs were learned: good completions gained log-probability against the bad ones
    rows = load_unpaired_rows(train_file).rows
    tok = load_tokenizer(model_dir(tmp_path))
    good_0, bad_0 = mean_logps(load_causal_lm(model_dir(tmp_path)), tok, rows)
    good_1, bad_1 = mean_logps(load_causal_lm(tmp_path / "kto" / "final"), tok, rows)
    assert (good_1 - bad_1) - (good_0 - bad_0) > 1.0


def test_simulated_annotators_label_thumbs_items_through_the_app(tmp_path):
    """Two simulated people answer thumbs items over HTTP: good responses get more ups than bad ones."""
    import random

    from rlhfkit.judges.simulated import annotator_panel, label_through_app
    from rlhfkit.worlds import World, generate_response

    world = World.build(0)
    rng = random.Random(0)
    items = []
    for prompt in world.sample_prompts(40, seed="thumbs-test"):
        for behaviour in ("good", next(b for b in ("wrong", "harmful_compliance", "over_refusal", "confabulation",
                                                   "sycophantic_agreement") if b in FAMILY_BEHAVIOURS[prompt.family])):
            items.append({"prompt": prompt.text, "responses": [generate_response(prompt, behaviour, rng, "plain")],
                          "kind": "thumbs"})
    url = seeded_db(tmp_path, items, overlap=2)
    choices = label_through_app(url, annotator_panel(world, 2, tau=0.3))
    assert sum(choices.values()) == 2 * len(items) and set(choices) == {"up", "down"}
    manifest = commands.export(url, tmp_path / "out", min_votes=2)
    rows = load_unpaired_rows(tmp_path / "out" / "unpaired.train.jsonl").rows
    assert manifest["counts"]["thumbs_items_without_majority"] + len(rows) == len(items)
    good = {item["responses"][0] for item in items[::2]}
    up_rate = {kind: sum(r.label for r in rows if (r.completion in good) == kind) /
               max(1, sum((r.completion in good) == kind for r in rows)) for kind in (True, False)}
    assert up_rate[True] > 0.8 > 0.2 > up_rate[False]
