"""``rlhfkit demo --preset quick`` end to end through the real CLI, from an empty cache: the report holds every
policy with every protocol key, every stage's output loads with plain transformers, the reward model beats
chance on held-out pairs (re-measured here without rlhfkit's judge), and a re-run reuses every stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhfkit.worlds import FAMILIES, FAMILY_BEHAVIOURS
from rlhfkit.worlds.protocol import RATES

pytestmark = pytest.mark.slow

POLICIES = ("base", "sft", "best_of_n", "dpo", "ppo")
STAGES = ("world", "sft", "samples", "labels", "reward", "ppo", "dpo", "best_of_n", "eval")


def protocol_keys() -> set[str]:
    """Every key of the evaluation protocol against SFT (docs/world.md §8, docs/evaluation.md) plus the
    report's win-rate intervals."""
    keys = {"counts/prompts", "counts/pairs", "gold/utility_a", "gold/utility_b", "gold/utility_delta",
            "gold/utility_delta_ci_low", "gold/utility_delta_ci_high", "gold/goal_a", "gold/goal_b",
            "gold/goal_delta", "win_rate/ties_half", "win_rate/ties_half_cap", "win_rate/decisive",
            "win_rate/goal_decisive", "pairs/win_fraction", "pairs/loss_fraction", "pairs/tie_fraction",
            "pairs/goal_tie_fraction", "pairs/identical_fraction", "kl/nats_per_seq", "judge/name",
            "judge/score_delta", "judge/score_delta_ci_low", "judge/score_delta_ci_high"}
    keys |= {f"gold/family/{f}/utility_delta" for f in FAMILIES}
    for side in ("a", "b"):
        keys |= {f"rates/{side}/{r}" for r in RATES} | {f"length/{side}/mean_words"}
        keys |= {f"behaviours/{side}/{f}/{b}" for f in FAMILIES for b in FAMILY_BEHAVIOURS[f]}
    keys |= {f"win_rate/{w}_ci_{end}" for w in ("ties_half", "decisive", "goal_decisive") for end in ("low", "high")}
    return keys


def run_demo(out: Path, cache: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "demo", "--preset", "quick", "--out", str(out),
                           f"world.cache_dir={cache}", *overrides], capture_output=True, text=True, timeout=900)
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_quick")
    done, seconds = run_demo(root / "run", root / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", root / "cache", done, seconds


def test_report_has_every_policy_and_key_and_the_run_settings(quick_run):
    out, _, done, seconds = quick_run
    print(f"quick preset, fresh cache: {seconds:.0f} s")
    report = json.loads((out / "report.json").read_text())
    assert list(report["policies"]) == list(POLICIES)
    for name, metrics in report["policies"].items():
        missing = protocol_keys() - set(metrics)
        assert not missing, f"{name} lacks {sorted(missing)[:5]}"
        assert metrics["counts/pairs"] == 5 * 20 * 2  # eval.limit=20 per family × 2 samples
    sft = report["policies"]["sft"]
    assert sft["kl/nats_per_seq"] == pytest.approx(0.0, abs=1e-5)  # SFT against itself
    assert report["policies"]["best_of_n"]["kl/nats_per_seq"] == pytest.approx(math.log(4) - 3 / 4)
    assert report["policies"]["base"]["kl/nats_per_seq"] > 0.1  # the base model is far from SFT
    assert report["seed"] == 0 and report["preset"] == "quick" and report["settings"]["world"]["size"] == "micro"
    assert set(STAGES) <= set(report["stages"]) and all(report["stages"][s]["seconds"] >= 0 for s in STAGES)
    labels = report["labels"]
    assert labels["labelled"] == labels["train_rows"] + labels["heldout_rows"] > 100
    assert labels["pairs"] == labels["identical"] + labels["ties"] + labels["both_bad"] + labels["labelled"]
    assert labels["tau"] > 0.0 and 0.0 < labels["disagreement"] < 0.5
    examples = report["examples"]  # examples_per_family=1: one eval prompt per family, every policy's sample
    assert len(examples) == 5 and {e["family"] for e in examples} == set(FAMILIES)
    assert all(set(e["responses"]) == set(POLICIES) for e in examples)
    demo = json.loads((out / "demo.json").read_text())
    assert demo["seed"] == 0 and set(STAGES) <= set(demo["stages"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page
    assert "PPO" in done.stdout and "Δ utility" in done.stdout  # the table is also printed on the terminal


def test_every_stage_output_loads_with_plain_transformers(quick_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out, cache, _, _ = quick_run
    world = next(cache.glob("world-*"))
    causal = [world / "base", out / "02-sft" / "final", out / "06-ppo" / "final", out / "07-dpo" / "final"]
    scalar = [out / "05-reward" / "final", out / "06-ppo" / "value_model"]
    for folder in causal + scalar:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        auto = AutoModelForCausalLM if folder in causal else AutoModelForSequenceClassification
        model = auto.from_pretrained(folder).eval()
        ids = tokenizer("what is 7 plus 5?", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits
        assert torch.isfinite(logits).all(), folder
        if folder in scalar:
            assert logits.shape == (1, 1), folder  # one score per sequence
        else:
            assert logits.shape[-1] >= len(tokenizer), folder  # next-token logits over the vocabulary
    # training moved the weights: DPO and PPO differ from SFT, and SFT from the base model
    weights = {f.parent.name: AutoModelForCausalLM.from_pretrained(f).get_input_embeddings().weight for f in causal[1:]}
    base = AutoModelForCausalLM.from_pretrained(causal[0]).get_input_embeddings().weight
    assert not torch.equal(weights["02-sft"], base)
    assert not torch.equal(weights["06-ppo"], weights["02-sft"]) and not torch.equal(weights["07-dpo"], weights["02-sft"])


def test_the_reward_hacking_monitor_checked_ppo_on_held_out_prompts(quick_run):
    from transformers import AutoModelForCausalLM

    from rlhfkit.evaluate.hacking import read_history

    out, _, _, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    checks = read_history(out / "06-ppo" / "monitor" / "monitor.jsonl")
    assert [c["step"] for c in checks] == [4, 8, 12, 16]  # every hacking.every=4 steps of 16
    assert all(c["n"] >= 25 and c["kl"] is not None for c in checks)  # the 25 monitor prompts
    assert report["hacking"]["checks"] == 4 and report["hacking"]["best_step"] in (4, 8, 12, 16)
    assert report["hacking"]["mode"] in ("hook", "passive") and report["hacking"]["verdict"]
    rollout = [json.loads(line) for line in (out / "06-ppo" / "rollout_gold.jsonl").open()]
    assert [r["step"] for r in rollout] == list(range(1, 17))  # gold of every training rollout
    if report["hacking"]["mode"] == "hook":  # the best policy by the gold judge is kept
        best = Path(report["hacking"]["best_dir"])
        assert json.loads((best / "monitor_best.json").read_text())["step"] == report["hacking"]["best_step"]
        AutoModelForCausalLM.from_pretrained(best)


def binomial_tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def test_reward_model_beats_chance_on_held_out_pairs(quick_run):
    """Re-measured here with plain transformers and the gold judge: the reward model orders held-out SFT pairs
    (never trained on) like the gold judge far more often than a coin would, and the report says the same."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.data import encode_pair
    from rlhfkit.worlds import GoldJudge, World

    out, _, _, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    folder = out / "05-reward" / "final"
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    gold = GoldJudge(World.build(0))
    train_prompts = {json.loads(line)["prompt"] for line in (out / "04-labels" / "prefs_train.jsonl").open()}

    def raw_score(prompt: str, response: str) -> float:
        prompt_ids, response_ids = encode_pair(tokenizer, prompt, response)
        with torch.no_grad():
            return float(model(torch.tensor([prompt_ids + response_ids])).logits[0, 0])

    agree = n = 0
    for line in (out / "04-labels" / "heldout_pairs.jsonl").open():
        row = json.loads(line)
        assert row["prompt"] not in train_prompts  # held out by prompt
        ua, ub = gold.score(row["prompt"], row["a"]), gold.score(row["prompt"], row["b"])
        if row["a"].strip() == row["b"].strip() or abs(ua - ub) <= 0.05:
            continue
        n += 1
        agree += (raw_score(row["prompt"], row["a"]) > raw_score(row["prompt"], row["b"])) == (ua > ub)
    rm = report["reward_model"]
    assert n == rm["heldout_pairs_vs_gold"] and n >= 50
    assert agree / n == pytest.approx(rm["heldout_accuracy_vs_gold"], abs=1.5 / n)
    assert agree / n > 0.5 and binomial_tail(agree, n) < 0.01, f"{agree}/{n} is not clearly above chance"
    assert rm["annotator_accuracy_vs_gold"] > 0.7  # the labels it learned from agree with gold


def test_a_rerun_reuses_every_stage_and_gives_the_same_report(quick_run):
    out, cache, _, _ = quick_run
    first = json.loads((out / "report.json").read_text())
    done, _ = run_demo(out, cache)
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads((out / "report.json").read_text())
    assert all(second["stages"][s]["reused"] for s in STAGES)
    assert second["policies"] == first["policies"]


def test_the_larger_sft_comparison_reuses_the_run_and_judges_the_same_samples(quick_run):
    """The InstructGPT stages on the quick run (larger model: ``small``, 22x the quick world's ``micro``):
    stages 1–9 are reused, each small policy's row is judged on exactly its stage-9 samples, every row
    against the same larger-SFT samples, and the larger SFT model loads with plain transformers."""
    from transformers import AutoModelForCausalLM

    out, cache, _, _ = quick_run
    done, _ = run_demo(out, cache, "larger.enabled=true", "larger.size=small")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert all(report["stages"][s]["reused"] for s in STAGES)
    section = report["instructgpt"]
    assert section["larger_parameters"] > 8 * section["small_parameters"]
    rows = section["policies"]
    assert set(rows) == {"sft", "best_of_n", "dpo", "ppo", "larger_sft_vs_sft"}
    for name in ("sft", "best_of_n", "dpo", "ppo"):
        # the same policy samples as stage 9 (side a), so the same mean utility and behaviour rates
        assert rows[name]["gold/utility_a"] == pytest.approx(report["policies"][name]["gold/utility_a"])
        assert rows[name]["rates/a/helpful_correct"] == report["policies"][name]["rates/a/helpful_correct"]
        # every row against the same larger-SFT samples
        assert rows[name]["gold/utility_b"] == pytest.approx(rows["sft"]["gold/utility_b"])
        assert rows[name]["gold/utility_delta"] == pytest.approx(
            rows[name]["gold/utility_a"] - rows[name]["gold/utility_b"], abs=1e-9)
    # size alone: the larger SFT against the small SFT baseline of stage 9
    assert rows["larger_sft_vs_sft"]["gold/utility_b"] == pytest.approx(report["policies"]["sft"]["gold/utility_b"])
    model = AutoModelForCausalLM.from_pretrained(out / "11-larger_sft" / "final")
    assert sum(p.numel() for p in model.parameters()) == section["larger_parameters"]
    assert "InstructGPT in miniature" in (out / "report.md").read_text()
    assert "InstructGPT in miniature" in (out / "report.html").read_text()
