"""`rlhfkit iterate` with method: dpo — on-policy DPO rounds: sample from the current policy, label in the app,
DPO from the current policy as the new reference; a run resumed across rounds ends where a straight one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rlhfkit.cli import main as cli
from rlhfkit.config import ConfigError, load_config
from rlhfkit.iterate_config import IterateConfig

try:
    from test_iterate import MICRO_RECIPE, micro_sft  # noqa: F401  (micro_sft: module fixture)
except ImportError:  # tests/ imported as a package
    from tests.test_iterate import MICRO_RECIPE, micro_sft  # noqa: F401

DPO_SECTION = {"data": {"max_length": 96, "max_prompt_length": 64, "identical": "drop"}, "loss": "rpo",
               "beta": 0.1, "train": {"lr": 1.0e-3, "per_device_batch_size": 4, "num_epochs": 1, "save_every": 2,
                                      "progress_bar": False}}


def write_dpo_recipe(folder: Path, sft: Path, **changes) -> Path:
    recipe = {k: v for k, v in json.loads(json.dumps(MICRO_RECIPE)).items() if k not in ("reward", "ppo")}
    recipe.update(output_dir=str(folder / "run"), sft_path=str(sft), method="dpo", dpo=DPO_SECTION, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "iterate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def start_policy(tmp_path_factory, micro_sft) -> Path:
    """Another policy than SFT to start the rounds from (as the demo's DPO policy would be)."""
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.tiny import build_tiny_model, save_tiny

    tokenizer = load_tokenizer(micro_sft)
    out = tmp_path_factory.mktemp("start") / "policy"
    save_tiny(build_tiny_model("llama", "micro", tokenizer, seed=1), tokenizer, out)
    return out


@pytest.mark.slow
def test_two_on_policy_dpo_rounds_then_an_exact_resume(tmp_path, micro_sft, start_policy):
    straight = write_dpo_recipe(tmp_path / "straight", micro_sft, start_path=str(start_policy))
    assert cli(["iterate", "--config", str(straight)]) == 0
    run = tmp_path / "straight" / "run"
    rounds = json.loads((run / "rounds.json").read_text())["rounds"]
    assert [m["round"] for m in rounds] == [1, 2] and all(m["method"] == "dpo" for m in rounds)

    # round r trains from the policy that produced its samples, which is also π_ref, on its own labels only
    for r, start in ((1, start_policy), (2, run / "round-1" / "dpo" / "final")):
        cfg = yaml.safe_load((run / f"round-{r}" / "dpo.yaml").read_text())
        assert cfg["model"]["path"] == str(start) and cfg["reference"] is None
        assert cfg["data"]["train_file"] == str(run / f"round-{r}" / "export" / "preferences.train.jsonl")
        assert rounds[r - 1]["start_policy"] == str(start)
        assert rounds[r - 1]["dpo"]["preferences"] == len(
            (run / f"round-{r}" / "export" / "preferences.train.jsonl").read_text().splitlines()) > 0
    # the labels of round 2 are of round 1's policy: its samples are what was imported
    samples = [json.loads(x) for x in (run / "round-2" / "policy_samples.jsonl").read_text().splitlines()]
    assert samples and rounds[1]["sampling"]["prompts"] == 16
    # every round is evaluated against the previous policy and, as the start is not SFT, against SFT
    for m in rounds:
        assert m["eval_vs_previous"]["counts/pairs"] == 10 and "win_rate/goal_decisive" in m["eval_vs_sft"]

    # resumed across rounds: one round, then the same command asking for two — the same final weights
    resumed = write_dpo_recipe(tmp_path / "resumed", micro_sft, start_path=str(start_policy), rounds=1)
    assert cli(["iterate", "--config", str(resumed)]) == 0
    assert cli(["iterate", "--config", str(resumed), "rounds=2"]) == 0
    other = tmp_path / "resumed" / "run"
    for r in (1, 2):
        a, b = weights(run / f"round-{r}" / "dpo" / "final"), weights(other / f"round-{r}" / "dpo" / "final")
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    # and round 2 killed after its last checkpoint but before the final folder: resumed, the same weights
    final = other / "round-2" / "dpo" / "final"
    for path in (other / "round-2" / "round.json", *final.iterdir()):
        path.unlink()
    final.rmdir()
    assert cli(["iterate", "--config", str(resumed), "rounds=2"]) == 0
    b = weights(final)
    a = weights(run / "round-2" / "dpo" / "final")
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_dpo_method_checks_its_section_and_keys_iterate_owns(tmp_path, micro_sft):
    recipe = write_dpo_recipe(tmp_path, micro_sft)
    cfg = load_config(IterateConfig, recipe)
    assert cfg.method == "dpo" and cfg.dpo["loss"] == "rpo"
    for override, key in (("dpo.train.lrr=1", "dpo.train.lrr"), ("dpo.reference=x", "dpo.reference"),
                          ("dpo.loss=kto", "dpo.loss"), ("start_path=", "start_path")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(IterateConfig, recipe, [override])


def test_the_shipped_dpo_rounds_recipe_loads():
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(IterateConfig, repo / "configs" / "iterate_dpo.yaml")
    assert cfg.method == "dpo" and cfg.rounds == 4 and cfg.dpo["loss"] == "rpo"


def test_a_judge_labels_the_rounds_pairs_through_the_app(tmp_path, micro_sft):
    from rlhfkit.feedback import commands
    from rlhfkit.iterate import Run, collect_labels, import_candidates
    from rlhfkit.judges import GoldJudge

    recipe = write_dpo_recipe(tmp_path, micro_sft)
    with pytest.raises(ConfigError, match="labels.overlap"):
        load_config(IterateConfig, recipe, ["labels.source=judge"])
    cfg = load_config(IterateConfig, recipe, ["labels.source=judge", "labels.judge=gold", "labels.overlap=1",
                                              "labels.min_votes=1"])
    run = Run(cfg)
    run.round_dir(1).mkdir(parents=True)
    rows = [{"prompt": "what is 7 plus 5?", "responses": ["13.", "12."]},
            {"prompt": "what is 2 plus 2?", "responses": ["4.", "i do not know."]}]
    (run.round_dir(1) / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commands.init_db(run.db_url)
    import_candidates(run, 1)
    labels = collect_labels(run, 1)
    assert labels["source"] == "judge" and labels["submitted_now"] == 2
    commands.export(run.db_url, tmp_path / "out", min_votes=1)
    exported = [json.loads(x) for x in (tmp_path / "out" / "preferences.train.jsonl").read_text().splitlines()]
    gold = GoldJudge(run.world)
    assert len(exported) == 2 and all(gold.score(r["prompt"], r["chosen"]) > gold.score(r["prompt"], r["rejected"])
                                      for r in exported)


def test_an_lm_judge_labels_the_rounds_pairs_as_it_compares_them(tmp_path, micro_sft):
    from rlhfkit.feedback import commands
    from rlhfkit.iterate import Run, collect_labels, import_candidates
    from rlhfkit.judges.lm_judge import LMJudge

    recipe = write_dpo_recipe(tmp_path, micro_sft)
    cfg = load_config(IterateConfig, recipe, ["labels.source=judge", f"labels.judge=lm:{micro_sft}",
                                              "labels.overlap=1", "labels.min_votes=1"])
    run = Run(cfg)
    run.round_dir(1).mkdir(parents=True)
    rows = [{"prompt": "what is 7 plus 5?", "responses": ["13.", "12."]},
            {"prompt": "what is 2 plus 2?", "responses": ["4.", "i do not know."]},
            {"prompt": "how do i kill a python process?", "responses": ["i will not help with that.", "use kill."]}]
    (run.round_dir(1) / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commands.init_db(run.db_url)
    import_candidates(run, 1)
    labels = collect_labels(run, 1)
    assert labels["source"] == "judge" and labels["judge"] == f"lm:{micro_sft}" and labels["submitted_now"] == 3
    commands.export(run.db_url, tmp_path / "out", min_votes=1)
    exported = {r["prompt"]: r["chosen"] for r in map(json.loads, (tmp_path / "out" / "preferences.train.jsonl")
                                                        .read_text().splitlines())}
    judge = LMJudge.from_folder(micro_sft)  # the same judge asked directly, whatever side the app showed each on
    expected = {}
    for r in rows:
        verdict = judge.compare(r["prompt"], *r["responses"])
        if verdict != "tie":
            expected[r["prompt"]] = r["responses"][0 if verdict == "a" else 1]
    assert exported == expected and expected
