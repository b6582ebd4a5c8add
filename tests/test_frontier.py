"""``rlhfkit frontier`` (rlhfkit/demo/frontier.py): β sweeps of DPO and PPO on a finished quick demo run,
through the real CLI. Small budgets cannot promise a training outcome (that β = 0 hacks), so these tests check
structure and correctness: each point is measured exactly as the demo's stage 9 measures a policy, the
frontier's files agree with the per-point evaluations, the demo's own runs are reused and finished runs are
skipped, β reaches the trainers, and a bad run folder gets one sentence."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main as cli_main
from rlhfkit.demo.frontier_report import POINT_KEYS, frontier_plot, kl_penalty_plot, moving_average

try:
    from test_demo_quick import run_demo as run_quick_demo
except ImportError:  # pragma: no cover - run from the repository root
    from tests.test_demo_quick import run_demo as run_quick_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP = ["--dpo-betas", "0.1", "0.3", "--ppo-betas", "0", "0.1", "--threads", "1"]  # 0.1 = both recipes' β


def frontier(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli", "frontier", "--run", str(run), *extra],
                          capture_output=True, text=True, timeout=900)


def read(path: Path):
    return json.loads(Path(path).read_text())


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100, path


# ----------------------------------------------------------------------------- fast: pure parts and bad input


def test_moving_average_by_hand():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 3.0, 5.0], 1) == [1.0, 3.0, 5.0]
    assert moving_average([2.0, 4.0, 9.0], 10) == [2.0, 3.0, 5.0]  # a window longer than the run: running mean


def test_plots_are_pngs_and_none_without_data():
    point = {"method": "dpo", "beta": 0.1, "reused": False,
             "metrics": {"kl/nats_per_seq": 1.5, "gold/utility_delta": 0.2, "gold/utility_delta_ci_low": 0.1,
                         "gold/utility_delta_ci_high": 0.3}}
    no_kl = {**point, "metrics": {**point["metrics"], "kl/nats_per_seq": None}}
    assert frontier_plot([point, {**point, "method": "ppo", "beta": 0.0}])[:8] == PNG_MAGIC
    assert frontier_plot([no_kl]) is None
    rows = [{"step": s, "proxy": 0.1 * s, "gold": 0.5 - 0.01 * s * s, "kl": 0.3 * s} for s in range(1, 21)]
    assert kl_penalty_plot({"β = 0": rows, "β = 0.1": rows[:10]})[:8] == PNG_MAGIC
    assert kl_penalty_plot({"β = 0": []}) is None


@pytest.mark.parametrize("args, says", [
    (["--run", "{missing}"], "no such run folder"),
    (["--run", "{empty}"], "settings.yaml is missing"),
    (["--run", "{empty}", "--dpo-betas", "0"], "DPO's β must be > 0"),
    (["--run", "{empty}", "--ppo-betas", "-0.1"], "KL coefficient must be >= 0"),
])
def test_a_bad_run_folder_or_beta_gets_one_sentence(tmp_path, capsys, args, says):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in args]
    assert cli_main(["frontier", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlhfkit frontier: ") and says in err[-1] and "Traceback" not in "\n".join(err)


# ----------------------------------------------------------------------------- slow: on a quick demo run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A finished quick demo (as tests/test_demo_quick.py makes it) and a pristine copy of it."""
    root = tmp_path_factory.mktemp("frontier")
    done, _ = run_quick_demo(root / "run", root / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(root / "run", root / "pristine")
    return root


@pytest.fixture(scope="module")
def swept(quick_run):
    """``rlhfkit frontier`` with DPO β ∈ {0.1, 0.3} and PPO β ∈ {0, 0.1} on the quick run (0.1 = the recipes')."""
    done = frontier(quick_run / "run", *SWEEP)
    assert done.returncode == 0, done.stderr[-3000:]
    return quick_run / "run", done


def copy_of(quick_run: Path, name: str) -> Path:
    """A copy of the finished run under another path (the frontier must read the copy's own files)."""
    target = quick_run / name
    shutil.copytree(quick_run / "pristine", target)
    return target


@pytest.mark.slow
def test_every_point_is_evaluated_and_the_frontier_files_agree(swept):
    run, done = swept
    folder = run / "frontier"
    result = read(folder / "frontier.json")
    names = [p["name"] for p in result["points"]]
    assert names == ["dpo-demo", "dpo-beta0.3", "ppo-beta0", "ppo-demo"]
    assert [(p["method"], p["beta"], p["reused"]) for p in result["points"]] == [
        ("dpo", 0.1, True), ("dpo", 0.3, False), ("ppo", 0.0, False), ("ppo", 0.1, True)]
    for point in result["points"]:
        saved = read(folder / point["name"] / "eval.json")
        assert Path(point["eval_file"]) == folder / point["name"] / "eval.json"
        metrics = saved["metrics"]
        for key in ("kl/nats_per_seq", "gold/utility_delta", "proxy/score", "proxy/score_sft"):
            assert math.isfinite(metrics[key]), (point["name"], key)
        low, delta, high = (metrics[f"gold/utility_delta{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert low <= delta <= high
        assert point["metrics"] == {k: metrics.get(k) for k in POINT_KEYS}  # frontier.json = the eval files
        assert len(saved["texts"]) == metrics["counts/prompts"] == 100  # eval.limit=20 × 5 families
        assert result["eval_prompts"] == 100 and result["eval_samples"] == 2
    # the SFT baseline's proxy score is one number, whichever point reports it
    assert len({p["metrics"]["proxy/score_sft"] for p in result["points"]}) == 1
    md = (folder / "frontier.md").read_text()
    assert md.count("| DPO |") == 2 and md.count("| PPO |") == 2 and "(frontier.png)" in md and "(kl_penalty.png)" in md
    assert_png(folder / "frontier.png")
    assert_png(folder / "kl_penalty.png")
    assert "| DPO | 0.3 |" in done.stdout  # the table is printed too


@pytest.mark.slow
def test_the_demo_runs_are_reused_and_the_swept_ones_trained_with_their_beta(swept):
    from transformers import AutoModelForCausalLM

    from rlhfkit.config import load_config, to_dict
    from rlhfkit.demo.pipeline import stage_classes

    run, done = swept
    folder = run / "frontier"
    # the recipes' β was not trained again: no folder for it, the demo's policy and its stage-9 figures
    assert not (folder / "dpo-beta0.1").exists() and not (folder / "ppo-beta0.1").exists()
    for method, stage in (("dpo", "07-dpo"), ("ppo", "06-ppo")):
        assert sorted(p.name for p in (folder / f"{method}-demo").iterdir()) == ["eval.json"]
        saved = read(folder / f"{method}-demo" / "eval.json")
        assert saved["policy_dir"] == str(run / stage / "final")
        demo = read(run / "09-eval" / f"{method}.json")
        assert saved["texts"] == demo["texts"] and all(saved["metrics"][k] == v for k, v in demo["metrics"].items())
    # the swept runs: the run's recipe with only β (and the output folder) changed
    for name, method, beta_key, beta in (("dpo-beta0.3", "dpo", "beta", 0.3), ("ppo-beta0", "ppo", "kl", 0.0)):
        recipe = to_dict(load_config(stage_classes()[method], folder / "recipes" / f"{name}.yaml"))
        original = to_dict(load_config(stage_classes()[method], run / "recipes" / f"{method}.yaml"))
        assert recipe["train"].pop("output_dir") == str(folder / name) and original["train"].pop("output_dir")
        expected = beta if method == "dpo" else {**original["kl"], "controller": "fixed", "init_coef": beta}
        assert recipe.pop(beta_key) == expected and original.pop(beta_key) != expected
        assert recipe == original
        assert read(folder / name / "stage.json")["status"] == "complete"
    # β reached the trainers: same data, seed and budget as the demo's run, other weights
    for name, stage in (("dpo-beta0.3", "07-dpo"), ("ppo-beta0", "06-ppo")):
        ours = AutoModelForCausalLM.from_pretrained(folder / name / "final").get_input_embeddings().weight
        demo = AutoModelForCausalLM.from_pretrained(run / stage / "final").get_input_embeddings().weight
        assert ours.shape == demo.shape and not torch.equal(ours, demo), name
    rollout = [json.loads(line) for line in (folder / "ppo-beta0" / "rollout_gold.jsonl").open()]
    assert [r["step"] for r in rollout] == list(range(1, 17))  # the demo's PPO stage recorded every step
    assert (folder / "ppo-beta0" / "monitor" / "monitor.jsonl").exists()  # and ran the hacking monitor
    point = next(p for p in read(folder / "frontier.json")["points"] if p["name"] == "ppo-beta0")
    assert point["steps"] == 16 and point["monitor"] and point["rollout_gold"] == str(folder / "ppo-beta0" /
                                                                                      "rollout_gold.jsonl")


@pytest.mark.slow
def test_a_second_invocation_trains_and_evaluates_nothing(swept):
    run, _ = swept
    folder = run / "frontier"
    before = {p: p.stat().st_mtime_ns for p in folder.glob("*/*") if p.name in ("stage.json", "eval.json", "final")}
    first = read(folder / "frontier.json")
    done = frontier(run, *SWEEP)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("finished before, reusing") == 2
    assert "training DPO" not in done.stderr and "training PPO" not in done.stderr and "eval: " not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # no run, no evaluation written again
    second = read(folder / "frontier.json")
    assert second["points"] == first["points"]


@pytest.mark.slow
def test_policies_are_measured_exactly_as_the_demo_measures_them(quick_run):
    """Re-measure the demo's DPO and PPO with the frontier's evaluation: the demo's stage-9 figures to the
    last digit (the same samples, KL and intervals) — only the baseline's token count is unknown from texts."""
    from rlhfkit.demo.evaluation import eval_prompts
    from rlhfkit.demo.frontier import measure_policy, open_run, saved_baseline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = open_run(quick_run / "pristine")
        prompts = eval_prompts(ctx)
        baseline = saved_baseline(ctx, prompts)
        for name, stage in (("dpo", "07-dpo"), ("ppo", "06-ppo")):
            metrics, texts = measure_policy(ctx, ctx.out / stage / "final", prompts, baseline)
            demo = read(ctx.out / "09-eval" / f"{name}.json")
            assert texts == demo["texts"]
            differing = {k for k, v in demo["metrics"].items() if metrics.get(k) != v}
            assert differing == {"length/b/mean_tokens"}, differing
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_set_changes_the_budget_so_the_recipe_beta_is_trained_again(quick_run):
    run = copy_of(quick_run, "budget")
    done = frontier(run, "--dpo-betas", "0.1", "--ppo-betas", "0.1", "--threads", "1",
                    "--set", "ppo.train.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    points = {p["name"]: p for p in read(run / "frontier" / "frontier.json")["points"]}
    assert set(points) == {"dpo-demo", "ppo-beta0.1"}  # DPO's recipe is untouched: the demo's own is reused
    assert points["ppo-beta0.1"]["steps"] == 2 and not points["ppo-beta0.1"]["reused"]
    rollout = (run / "frontier" / "ppo-beta0.1" / "rollout_gold.jsonl").read_text().splitlines()
    assert len(rollout) == 2
    assert "unknown key" in frontier(run, "--set", "ppo.train.no_such_key=1").stderr


@pytest.mark.slow
def test_an_unfinished_or_stale_run_gets_one_sentence(quick_run, capsys):
    run = copy_of(quick_run, "broken")
    manifest = run / "07-dpo" / "stage.json"
    finished = read(manifest)
    manifest.write_text(json.dumps({**finished, "status": "running"}))
    assert cli_main(["frontier", "--run", str(run)]) == 2
    assert "the demo's dpo stage (07-dpo) is not finished" in capsys.readouterr().err
    manifest.write_text(json.dumps(finished))
    world = run / "01-world" / "stage.json"
    world.write_text(json.dumps({**read(world), "fingerprint": "0" * 16}))
    assert cli_main(["frontier", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "the built-in world" in err[-1] and "changed since this run was made" in err[-1]
    assert not (run / "frontier").exists()  # refused before writing anything
