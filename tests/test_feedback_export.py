"""Export: majority aggregation, split by prompt, pseudonyms, CSV neutralisation, atomicity, the trainers' validator."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import pytest
from feedback_helpers import fast_scrypt, make_client, seeded_db, web_login  # noqa: F401  (fast_scrypt: autouse)

from rlhfkit.feedback import assign, auth
from rlhfkit.feedback import export as export_mod
from rlhfkit.feedback.assign import ScreenAnswer
from rlhfkit.feedback.db import Database, get_setting
from rlhfkit.feedback.export import ExportOptions, borda_consensus, csv_safe, split_of, strict_majority

ANNOTATORS = ("ann1", "ann2", "ann3")
ITEMS = [
    {"id": "maj0", "prompt": "P maj0", "responses": ["maj0-r0", "maj0-r1"]},
    {"id": "maj1", "prompt": "P maj1", "responses": ["maj1-r0", "maj1-r1"]},
    {"id": "tie", "prompt": "P tie", "responses": ["tie-r0", "tie-r1"]},
    {"id": "split", "prompt": "P split", "responses": ["split-r0", "split-r1"]},
    {"id": "few", "prompt": "P few", "responses": ["few-r0", "few-r1"]},
    {"id": "rank", "prompt": "P rank", "responses": ["rank-r0", "rank-r1", "rank-r2"]},
    {"id": "rtie", "prompt": "P rtie", "responses": ["rtie-r0", "rtie-r1", "rtie-r2"]},
    {"id": "demo", "prompt": "P demo", "kind": "demo"},
    {"id": "gold", "prompt": "P gold", "responses": ["gold-r0", "gold-r1"], "gold": {"best": 0}},
]
# Canonical answers per (item, annotator): an int = index of the better response, a list = ranking,
# "tie"/"both_bad", "skip", or ("demo", text). Formula-like notes ride along for the CSV test.
PLAN = {
    "maj0": [0, 0, 1], "maj1": [1, 1, 1], "tie": ["tie", "tie", 0], "split": [0, 1, "both_bad"],
    "few": [0, "skip", "skip"], "rank": [[0, 1, 2], [0, 2, 1], [0, 1, 2]],
    "rtie": [[0, 1, 2], [1, 0, 2], "skip"], "demo": [("demo", "Written ideal answer."), ("demo", "Another one."),
                                                      "skip"],
    "gold": [0, 1, 0],
}
NOTES = {"ann1": "=HYPERLINK(\"http://evil\")", "ann2": "+1+2", "ann3": "@SUM(A1)"}


def _screen_answer(task: assign.Task, texts: list[str], plan, note: str) -> ScreenAnswer:
    slot_of = {text: slot for slot, text in enumerate(task.responses)}
    if isinstance(plan, int):
        return ScreenAnswer(choice="AB"[slot_of[texts[plan]]], note=note)
    if isinstance(plan, list):
        return ScreenAnswer(ranking=[slot_of[texts[p]] for p in plan], note=note)
    if isinstance(plan, tuple):
        return ScreenAnswer(response=plan[1], note=note)
    return ScreenAnswer(choice=plan, note=note)


@pytest.fixture
def judged(tmp_path):
    url = seeded_db(tmp_path, ITEMS, overlap=3, users=("admin", *ANNOTATORS))
    db = Database.open(url)
    texts = {item["prompt"]: (item["id"], item.get("responses", [])) for item in ITEMS}
    for index, name in enumerate(ANNOTATORS):
        with db.read() as conn:
            user = auth.get_user(conn, name)
        while (task := assign.lease_next(db, user, lease_seconds=600)) is not None:
            item_id, responses = texts[task.prompt]
            plan = PLAN[item_id][index]
            if plan == "skip":
                assign.skip(db, user, task.assignment_id)
            else:
                assign.submit(db, user, task.assignment_id, _screen_answer(task, responses, plan, NOTES[name]))
    yield url, db
    db.dispose()


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_majority_ties_rankings_demos_and_manifest(judged, tmp_path):
    url, db = judged
    out = tmp_path / "export"
    manifest = export_mod.export(db, out, ExportOptions(min_votes=2))
    prefs = _read_jsonl(out / "preferences.train.jsonl")
    assert sorted((p["prompt"], p["chosen"], p["rejected"]) for p in prefs) == [
        ("P maj0", "maj0-r0", "maj0-r1"), ("P maj1", "maj1-r1", "maj1-r0")]
    ties = _read_jsonl(out / "ties.jsonl")
    assert [(t["prompt"], t["outcome"], t["votes"]) for t in ties] == [("P tie", "tie", {"tie": 2, "0": 1})]
    assert _read_jsonl(out / "rankings.train.jsonl") == [
        {"prompt": "P rank", "responses": ["rank-r0", "rank-r1", "rank-r2"], "ranking": [0, 1, 2]}]
    assert sorted(r["response"] for r in _read_jsonl(out / "sft.train.jsonl")) == ["Another one.",
                                                                                   "Written ideal answer."]
    counts = manifest["counts"]
    assert counts["pair_items_without_majority"] == 1  # "split"
    assert counts["pair_items_below_min_votes"] == 1  # "few"
    assert counts["rank_items_with_tied_consensus"] == 1  # "rtie": mean ranks of 0 and 1 are equal
    assert counts["gold_items_left_out"] == 1 and counts["judgments"] == sum(
        1 for plans in PLAN.values() for p in plans if p != "skip")
    assert manifest["schema_version"] >= 1 and manifest["filters"]["min_votes"] == 2
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        if name.endswith(".jsonl"):
            assert len(data.splitlines()) == info["rows"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    with_gold = export_mod.export(db, tmp_path / "g", ExportOptions(min_votes=2, include_gold=True))
    assert with_gold["counts"]["preferences_train"] == 3  # gold item's majority (2 of 3 chose r0) joins
    each = export_mod.export(db, tmp_path / "e", ExportOptions(min_votes=2, ranking_aggregate="each"))
    assert each["counts"]["rankings_train"] == 5  # 3 rankings of "rank" + 2 of "rtie"


def test_raw_export_pseudonymises_annotators(judged, tmp_path):
    url, db = judged
    export_mod.export(db, tmp_path / "a")
    export_mod.export(db, tmp_path / "b")
    raw_text = (tmp_path / "a" / "judgments.raw.jsonl").read_text()
    assert not any(name in raw_text for name in ANNOTATORS)
    raw = _read_jsonl(tmp_path / "a" / "judgments.raw.jsonl")
    with db.read() as conn:
        key = get_setting(conn, "pseudonym_key")
    assert {r["annotator"] for r in raw} == {export_mod.pseudonym(key, n) for n in ANNOTATORS}
    assert raw == _read_jsonl(tmp_path / "b" / "judgments.raw.jsonl")  # stable across exports
    assert len({r["judgment_id"] for r in raw}) == len(raw)
    canonical = [r for r in raw if r["item_id"] == "maj1"]
    assert [r["ranking"] for r in canonical] == [[1, 0]] * 3  # canonical order whatever the screen showed


def test_csv_cells_that_look_like_formulas_are_neutralised(judged, tmp_path):
    url, db = judged
    export_mod.export(db, tmp_path / "x")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x" / "judgments.csv").read_text())))
    assert {r["note"] for r in rows} == {"'" + note for note in NOTES.values()}
    client = make_client(url)
    web_login(client, "admin")
    response = client.get("/admin/export/judgments.csv")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    http_rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["note"] for r in http_rows} == {"'" + note for note in NOTES.values()}
    for value in ("=1+1", "+1", "-1", "@x", "\tx", "\rx"):
        assert csv_safe(value) == "'" + value
    assert csv_safe("plain") == "plain" and csv_safe(-1) == -1  # numbers are not text cells


def test_crash_while_writing_leaves_the_previous_export_intact(judged, tmp_path, monkeypatch):
    url, db = judged
    out = tmp_path / "out"
    export_mod.export(db, out, ExportOptions(min_votes=2))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write, calls = export_mod._write_durable, []

    def crashing_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(data[: len(data) // 2])  # a half-written file, then the crash
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(export_mod, "_write_durable", crashing_write)
    with pytest.raises(OSError, match="disk full"):
        export_mod.export(db, out, ExportOptions(min_votes=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder, no half file


def test_crash_while_moving_files_in_leaves_no_manifest(judged, tmp_path, monkeypatch):
    url, db = judged
    out = tmp_path / "out"
    export_mod.export(db, out)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(export_mod.os, "replace", crashing_replace)
    with pytest.raises(OSError, match="power cut"):
        export_mod.export(db, out, ExportOptions(min_votes=1))
    assert not (out / "manifest.json").exists()  # readers see an unfinished export, not a mixed one
    assert not [p for p in out.iterdir() if p.name.startswith(".export-staging")]


def test_split_by_prompt_is_deterministic_and_exclusive(tmp_path):
    prompts = [f"prompt number {i}" for i in range(400)]
    splits = [split_of(p, 0.25) for p in prompts]
    assert splits == [split_of(p, 0.25) for p in prompts]
    assert 60 < splits.count("eval") < 140
    assert all(split_of(p, 0.0) == "train" for p in prompts)


def test_export_output_passes_the_trainers_validator(judged, tmp_path):
    formats = pytest.importorskip("rlhfkit.data.formats", reason="rlhfkit.data.formats is not available")
    url, db = judged
    out = tmp_path / "v"
    export_mod.export(db, out, ExportOptions(min_votes=2, include_gold=True, eval_fraction=0.5))
    checked = 0
    for stem, kind in (("preferences", "preference"), ("rankings", "ranking"), ("sft", "sft")):
        for split in ("train", "eval"):
            path = out / f"{stem}.{split}.jsonl"
            if path.read_text():
                result = formats.load_rows(path, kind)
                assert len(result.rows) == len(path.read_text().splitlines())
                checked += 1
    assert checked >= 3


def test_aggregation_helpers():
    from collections import Counter

    assert strict_majority(Counter({"0": 2, "1": 1})) == "0"
    assert strict_majority(Counter({"0": 1, "1": 1})) is None
    assert strict_majority(Counter({"0": 2, "1": 1, "tie": 1})) is None  # 2 of 4 is not more than half
    assert borda_consensus([[2, 0, 1], [2, 1, 0], [2, 0, 1]]) == [2, 0, 1]
    assert borda_consensus([[0, 1, 2], [1, 0, 2]]) is None
    with pytest.raises(ValueError, match="min_votes"):
        ExportOptions(min_votes=0)
    with pytest.raises(ValueError, match="ranking_aggregate"):
        ExportOptions(ranking_aggregate="mean")
