"""`rlhfkit label` (RLAIF): reading pairs, the world's judges, a reward-model judge, the output and its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.cli import main as cli
from rlhfkit.data import load_rows
from rlhfkit.judges.label import PairRow, label, read_pairs
from rlhfkit.judges.simulated import SimulatedAnnotatorJudge, world_sample_pairs
from rlhfkit.worlds import GoldJudge


@pytest.fixture(scope="module")
def world_pairs(world):
    """600 pairs written by the world's generator (75 % good), plus a few identical ones."""
    pairs = world_sample_pairs(world, 600, seed=3)
    return pairs + [(p, a, a) for p, a, _ in pairs[:5]]


def write_pairs(path: Path, pairs, form: str = "mixed") -> Path:
    """Half the rows as {"prompt", "responses"}, half as {"prompt", "a", "b"} (with an ignored extra key)."""
    lines = []
    for i, (prompt, a, b) in enumerate(pairs):
        text = prompt.text if hasattr(prompt, "text") else prompt
        if form == "responses" or (form == "mixed" and i % 2 == 0):
            lines.append({"prompt": text, "responses": [a, b]})
        else:
            lines.append({"prompt": text, "a": a, "b": b, "sample": i})
    path.write_text("".join(json.dumps(row) + "\n" for row in lines), encoding="utf-8")
    return path


def run_label(tmp_path: Path, judge: str, pairs_file: Path, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / f"prefs-{judge.replace(':', '_').replace('/', '_')}.jsonl"
    assert cli(["label", "--judge", judge, "--pairs", str(pairs_file), "--out", str(out), *extra]) == 0
    return out, json.loads(out.with_suffix(".manifest.json").read_text())


def test_gold_judge_labels_agree_with_gold_everywhere(tmp_path, world, world_pairs):
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", world_pairs)
    out, manifest = run_label(tmp_path, "gold", pairs_file)
    rows = load_rows(out, "preference").rows
    gold = GoldJudge(world)
    assert all(gold.score(r.prompt, r.chosen) > gold.score(r.prompt, r.rejected) for r in rows)
    # every pair of distinct gold utility is labelled; equal utilities are ties; identical texts never asked
    def same(a, b):
        return a.split() == b.split()

    identical = sum(same(a, b) for _, a, b in world_pairs)
    distinct = sum(1 for p, a, b in world_pairs if not same(a, b) and gold.score(p, a) != gold.score(p, b))
    equal = sum(1 for p, a, b in world_pairs if not same(a, b) and gold.score(p, a) == gold.score(p, b))
    counts = manifest["counts"]
    assert identical >= 5 and equal > 0
    assert (len(rows), counts["labelled"], counts["ties"], counts["identical"]) == (distinct, distinct, equal,
                                                                                     identical)
    assert counts["chose_a"] + counts["chose_b"] == distinct
    assert manifest["gold"]["agreement"] == 1.0 and manifest["gold"]["decisive_agreement"] == 1.0
    assert manifest["output"]["rows"] == len(rows) and len(manifest["output"]["sha256"]) == 64


def test_ai_judge_agreement_with_gold_is_measured_and_imperfect(tmp_path, world_pairs):
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", world_pairs)
    out, manifest = run_label(tmp_path, "ai", pairs_file)
    load_rows(out, "preference")
    agreement = manifest["gold"]["agreement"]
    # docs/world.md §6: about 83 % on an SFT-like mix; it likes length and misses polite harm, so never 100 %
    assert 0.72 <= agreement <= 0.93
    assert manifest["gold"]["pairs_with_gold_preference"] > 250


def test_simulated_annotator_judge_matches_its_own_answers(tmp_path, world, world_pairs):
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", world_pairs)
    out, manifest = run_label(tmp_path, "simulated", pairs_file, "--tau", "0.5", "--annotator-seed", "2")
    person = SimulatedAnnotatorJudge(world, tau=0.5, seed=2)
    rows = load_rows(out, "preference").rows
    assert rows and all(person.compare(r.prompt, r.chosen, r.rejected) == "a" for r in rows)
    assert 0.72 <= manifest["gold"]["agreement"] <= 0.92  # calibrated noise: ~82 % (docs/rlaif-and-iterate.md)


def test_reward_model_judge_picks_the_higher_score(tmp_path):
    from ppo_fixtures import save_reward_folder

    from rlhfkit.judges import make_judge

    folder = save_reward_folder(tmp_path)
    pairs = [(f"what is {i} plus {i + 1}?", f"the answer is {2 * i + 1}.", f"i do not know {i}.") for i in range(12)]
    out, manifest = run_label(tmp_path, f"reward:{folder}", write_pairs(tmp_path / "pairs.jsonl", pairs),
                              "--batch-size", "5")
    assert manifest["gold"] is None  # not world prompts: no gold figure
    judge = make_judge(f"reward:{folder}")
    rows = load_rows(out, "preference").rows
    assert len(rows) == manifest["counts"]["labelled"] and rows
    for row in rows:  # the batched scores decided as one pair at a time would
        assert judge.score(row.prompt, row.chosen) > judge.score(row.prompt, row.rejected)


BAD_LINES = [
    '{"prompt": "what is 7 plus 5?", "responses": ["12.", "13."]}',                  # 1: fine
    '{"prompt": "what is 7 plus 5?", "responses": ["12."', 	                          # 2: invalid JSON
    '["what is 7 plus 5?", "12.", "13."]',                                           # 3: not an object
    '{"responses": ["12.", "13."]}',                                                 # 4: no prompt
    '{"prompt": "what is 7 plus 5?", "responses": ["12.", "13.", "14."]}',            # 5: three responses
    '{"prompt": "what is 7 plus 5?", "responses": ["12.", ""]}',                      # 6: empty response
    '{"prompt": "what is 7 plus 5?", "a": "12."}',                                   # 7: b missing
    '{"prompt": "what is 7 plus 5?", "a": "12.", "b": 13}',                          # 8: b not text
    '{"prompt": "what is 7 plus 5?", "responses": ["12.", "13."], "a": "12."}',       # 9: both forms
    '{"prompt": 7, "a": "12.", "b": "13."}',                                         # 10: prompt not text
    '{"prompt": "what is 7 plus 5?"}',                                               # 11: no responses
]


def test_bad_rows_are_all_named_by_line_and_field_and_nothing_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(["label", "--judge", "gold", "--pairs", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    expected = [f"{bad} line 2: invalid JSON", f"{bad} line 3: expected a JSON object",
                f'{bad} line 4, field "prompt": missing', f'{bad} line 5, field "responses": expected a list of '
                "exactly 2 responses, got 3", f'{bad} line 6, field "responses[1]": empty text',
                f'{bad} line 7, field "b": missing', f'{bad} line 8, field "b": expected a string',
                f"{bad} line 9: give either", f'{bad} line 10, field "prompt": expected a string or a list',
                f'{bad} line 11, field "responses": missing']
    for sentence in expected:
        assert sentence in err, sentence
    assert f"{bad} line 1:" not in err and f"{bad} line 1," not in err and "10 problems found" in err
    assert not out.exists() and not out.with_suffix(".manifest.json").exists()


def test_world_judges_refuse_prompts_outside_the_world(tmp_path, capsys):
    pairs_file = write_pairs(tmp_path / "p.jsonl", [("what is 7 plus 5?", "12.", "13."),
                                                    ("write me a haiku about cheese", "no.", "cheese.")])
    assert cli(["label", "--judge", "ai", "--pairs", str(pairs_file), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f'{pairs_file} line 2, field "prompt": not a prompt of the built-in world' in err
    assert "line 1," not in err


def test_unknown_judge_lists_the_valid_ones(tmp_path, capsys):
    pairs_file = write_pairs(tmp_path / "p.jsonl", [("what is 7 plus 5?", "12.", "13.")])
    assert cli(["label", "--judge", "oracle", "--pairs", str(pairs_file), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "gold, ai, simulated, reward:DIR, lm:DIR" in capsys.readouterr().err


class RecordingJudge:
    """Prefers the longer text; records every pair it is asked about."""

    name = "longer"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def compare(self, prompt, a, b):
        self.asked.append((a, b))
        return "tie" if len(a) == len(b) else ("a" if len(a) > len(b) else "b")


def test_label_drops_identical_pairs_without_asking_and_keeps_orientation():
    pairs = [PairRow("p1", "long answer", "short", "f line 1"), PairRow("p2", "x", "long answer", "f line 2"),
             PairRow("p3", "same  text", " same text ", "f line 3"), PairRow("p4", "abc", "xyz", "f line 4")]
    judge = RecordingJudge()
    result = label(judge, pairs)
    assert judge.asked == [("long answer", "short"), ("x", "long answer"), ("abc", "xyz")]
    assert result.rows == [{"prompt": "p1", "chosen": "long answer", "rejected": "short"},
                           {"prompt": "p2", "chosen": "long answer", "rejected": "x"}]
    assert result.verdicts == ["a", "b", "identical", "tie"]
    assert result.counts == {"pairs": 4, "labelled": 2, "chose_a": 1, "chose_b": 1, "ties": 1, "both_bad": 0,
                             "identical": 1}


def test_read_pairs_accepts_both_forms_and_chat_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "responses": ["a", "b"], "id": 3}) + "\n\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "hi"}], "a": "c", "b": "d"}) + "\n")
    pairs, ignored = read_pairs(path)
    assert [(p.a, p.b, p.origin) for p in pairs] == [("a", "b", f"{path} line 1"), ("c", "d", f"{path} line 3")]
    assert pairs[1].prompt[0].content == "hi" and ignored == {"id": 1}


def test_an_empty_pairs_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli(["label", "--judge", "gold", "--pairs", str(empty), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{empty}: no pairs (an empty file)." in capsys.readouterr().err


def test_simulated_annotator_both_bad_is_counted_and_screen_choices_mirror(world):
    person = SimulatedAnnotatorJudge(world, tau=0.1, seed=4, both_bad_below=-0.5)
    prompt = "what is 7 plus 5?"
    result = label(person, [PairRow(prompt, "13.", "it is 2 or 3.", "f line 1"),   # −0.6 and −1.0: both bad
                            PairRow(prompt, "the answer is 12.", "13.", "f line 2")])
    assert result.verdicts == ["both_bad", "a"] and result.counts["both_bad"] == 1
    assert person.compare(prompt, "13.", "it is 2 or 3.") == "tie"  # the judge interface knows no both-bad
    assert person.screen_choice(prompt, "13.", "the answer is 12.") == "B"
    assert person.screen_choice(prompt, "the answer is 12.", "13.") == "A"
