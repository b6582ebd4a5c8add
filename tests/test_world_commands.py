"""`rlhfkit world show` and `rlhfkit world judge` as plain functions."""

import json

import pytest

from rlhfkit.worlds import FAMILIES, World
from rlhfkit.worlds.commands import judge_file, show


def test_show_prints_every_family_with_judged_responses(capsys):
    show(seed=0, n=1)
    out = capsys.readouterr().out
    for family in FAMILIES:
        assert f"== {family}" in out
    assert "harmful_compliance" in out and "u=+1.00 good" in out and "u=-1.00 incoherent" in out


def test_judge_file_scores_rows_and_counts_unknown_prompts(tmp_path, capsys):
    world = World.build(0)
    p = world.prompts("eval", "helpful")[0]
    rows = [
        {"prompt": p.text, "response": f"{p.answer}."},
        {"prompt": p.text, "response": "sorry, i cannot help with that."},
        {"prompt": "what is the meaning of life?", "response": "42."},
    ]
    path, out_path = tmp_path / "r.jsonl", tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = judge_file(path, out_path)
    assert summary["counts/rows"] == 3 and summary["counts/unknown_prompt"] == 1
    assert summary["rates/helpful_correct"] == 0.5
    assert summary["gold/utility"] == pytest.approx((1.0 - 0.5) / 2)
    scored = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["behaviour"] for r in scored] == ["good", "over_refusal", None]
    assert scored[0]["utility"] == 1.0 and scored[2]["utility"] is None
    assert "rates/helpful_correct" in capsys.readouterr().out


def test_judge_file_names_file_line_and_field_of_a_bad_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "what is 7 plus 5?", "response": "12."}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not valid JSON"):
        judge_file(path)
    path.write_text(json.dumps({"prompt": "what is 7 plus 5?"}) + "\n")
    with pytest.raises(ValueError, match=r'bad.jsonl line 1, field "response"'):
        judge_file(path)


def test_candidates_import_into_the_annotation_app(tmp_path):
    from rlhfkit.data import write_rows
    from rlhfkit.feedback import commands as app
    from rlhfkit.worlds import GoldJudge, World
    from rlhfkit.worlds.commands import candidates

    rows = candidates(seed=0, n=20)
    assert len(rows) == 20 and {r["kind"] for r in rows} == {"pair", "rank"}
    judge = GoldJudge(World.build(0))
    for row in rows:
        if "gold" in row:  # the hidden answer is the gold judge's own order
            best = row["gold"].get("best", row["gold"].get("ranking", [None])[0])
            scores = [judge.score(row["prompt"], r) for r in row["responses"]]
            assert scores[best] == max(scores)
    path = tmp_path / "cand.jsonl"
    write_rows(path, rows)
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    app.init_db(url)
    report = app.import_items(url, path)
    progress = app.stats(url)["progress"]
    assert progress["items"] == 20 and progress["gold_items"] == sum("gold" in r for r in rows), report
