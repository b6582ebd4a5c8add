"""``rlhfkit eval`` end to end on micro policies saved to disk: world protocol, reward judge, adapters, errors."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.cli import main as cli_main
from rlhfkit.judges.reward_model import RewardModelJudge
from rlhfkit.models.lora import LoraSettings, apply_lora, save_policy
from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model
from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer
from rlhfkit.worlds import FAMILIES, FAMILY_BEHAVIOURS
from rlhfkit.worlds.protocol import RATES

try:
    from test_evaluate_common import micro_policy, saved_policy, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import micro_policy, saved_policy, world_tokenizer

FAST = ["--max-new-tokens", "10", "--n-bootstrap", "200", "--batch-size", "32"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cli")


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli_main(["eval", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def protocol_keys() -> set[str]:
    keys = {"counts/prompts", "counts/pairs", "gold/utility_a", "gold/utility_b", "gold/utility_delta",
            "gold/utility_delta_ci_low", "gold/utility_delta_ci_high", "gold/goal_a", "gold/goal_b",
            "gold/goal_delta", "win_rate/ties_half", "win_rate/ties_half_cap", "win_rate/decisive",
            "win_rate/goal_decisive", "pairs/win_fraction", "pairs/loss_fraction", "pairs/tie_fraction",
            "pairs/goal_tie_fraction", "pairs/identical_fraction", "kl/nats_per_seq"}
    for side in "ab":
        keys |= {f"rates/{side}/{name}" for name in RATES} | {f"length/{side}/mean_words"}
        keys |= {f"behaviours/{side}/{f}/{b}" for f in FAMILIES for b in FAMILY_BEHAVIOURS[f]}
    return keys | {f"gold/family/{f}/utility_delta" for f in FAMILIES}


def test_gold_eval_writes_every_protocol_figure_in_range(root, capsys):
    out = root / "gold.json"
    code, stdout, _ = run(["--policy", saved_policy(root, 0), "--baseline", saved_policy(root, 1), "--judge", "gold",
                           "--limit", 2, "--samples", 2, "--out", out, *FAST], capsys)
    assert code == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert protocol_keys() <= set(m)
    assert m["counts/prompts"] == 10 and m["counts/pairs"] == 20
    for key, value in m.items():
        if value is None or isinstance(value, str):
            continue
        if key.startswith(("rates/", "behaviours/", "pairs/", "win_rate/", "judge/win_rate/", "judge/pairs/")):
            assert 0.0 <= value <= 1.0, key
        if key.startswith(("gold/utility_", "gold/goal_")):
            assert -2.0 <= value <= 2.0, key  # deltas of utilities in [-1, 1]
    assert m["gold/utility_delta_ci_low"] <= m["gold/utility_delta"] <= m["gold/utility_delta_ci_high"]
    assert m["kl/nats_per_seq"] > 0 and m["kl/n_sequences"] == 20
    assert report["settings"]["judge"] == "gold" and report["settings"]["limit"] == 2
    assert report["notes"] == []
    for text in ("gold utility", "goal-only decisive", "incoherent (all)", "KL(A ‖ B)"):
        assert text in stdout


def test_reward_judge_on_the_users_own_prompts(root, capsys):
    rm_model, rm_tok = reward_model_from_causal_lm(saved_policy(root, 0), seed=3)
    rm_dir = save_scalar_model(rm_model, rm_tok, root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in
                                 ["tell me a story about a cat", "what is the best way to learn to swim?",
                                  "write a haiku about the sea"]) + "\n")
    out, pairs = root / "reward.json", root / "pairs.jsonl"
    code, stdout, _ = run(["--policy", saved_policy(root, 0), "--baseline", saved_policy(root, 1),
                           "--judge", f"reward:{rm_dir}", "--prompts", prompts, "--samples", 2, "--out", out,
                           "--save-samples", pairs, *FAST], capsys)
    assert code == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["counts/prompts"] == 3 and m["counts/pairs"] == 6
    assert not any(k.startswith(("gold/", "rates/", "behaviours/", "win_rate/")) for k in m)
    assert any("need the built-in world" in note for note in report["notes"])
    assert "need the built-in world" in stdout
    # the judge figures are the reward model's normalised scores of the very texts that were sampled
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    judge = RewardModelJudge.from_folder(rm_dir)
    score_a = sum(judge.score(r["prompt"], r["a"]) for r in rows) / len(rows)
    score_b = sum(judge.score(r["prompt"], r["b"]) for r in rows) / len(rows)
    assert m["judge/score_a"] == pytest.approx(score_a, abs=1e-4)
    assert m["judge/score_delta"] == pytest.approx(score_a - score_b, abs=1e-4)
    assert m["kl/nats_per_seq"] > 0


def test_an_adapter_folder_evaluates_against_its_base(root, capsys):
    base = saved_policy(root, 0)
    peft_model = apply_lora(micro_policy(0), LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at zero (no change); move it so the adapter differs from its base
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    adapter = save_policy(peft_model, root / "adapter", merge=False, tokenizer=world_tokenizer(),
                          base_model_path=base)
    out = root / "adapter.json"
    code, _, _ = run(["--policy", adapter, "--baseline", base, "--limit", 1, "--samples", 1, "--out", out, *FAST],
                     capsys)
    assert code == 0
    assert json.loads(out.read_text())["metrics"]["kl/nats_per_seq"] > 0


def test_user_errors_are_one_sentence_with_exit_status_2(root, capsys):
    prompts = root / "mine.jsonl"
    prompts.write_text(json.dumps({"prompt": "write a haiku about the sea"}) + "\n")
    policy, baseline = saved_policy(root, 0), saved_policy(root, 1)
    code, _, err = run(["--policy", policy, "--baseline", baseline, "--judge", "gold", "--prompts", prompts], capsys)
    assert code == 2 and "line 1" in err and "reads only world prompts" in err
    code, _, err = run(["--policy", policy, "--baseline", baseline, "--judge", "oracle"], capsys)
    assert code == 2 and "unknown judge 'oracle'" in err
    code, _, err = run(["--policy", root / "nowhere", "--baseline", baseline], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run(["--policy", policy, "--baseline", baseline, "--samples", 0], capsys)
    assert code == 2 and "--samples must be at least 1" in err
    other_tok = train_tokenizer(["another corpus entirely, with other words"] * 30, vocab_size=300, style="world")
    stranger = save_tiny(build_tiny_model("llama", "micro", other_tok, seed=0), other_tok, root / "stranger")
    code, _, err = run(["--policy", policy, "--baseline", stranger, "--limit", 1], capsys)
    assert code == 2 and "tokenizers differ" in err


def test_lm_judge_compares_each_pair_as_label_does(root, capsys):
    """``--judge lm:DIR``: every pair's verdict and margin are the LM judge's pairwise reading (both orders), the
    one ``rlhfkit label`` uses — recomputed here from the saved pairs with the judge's own ``margins``."""
    from rlhfkit.judges.base import outcome
    from rlhfkit.judges.lm_judge import LMJudge

    judge_dir = saved_policy(root, 2)  # a third micro model, built from its config, as the judge
    prompts = root / "lm_prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in
                                 ["tell me a story about a cat", "write a haiku about the sea"]) + "\n")
    out, pairs = root / "lm.json", root / "lm_pairs.jsonl"
    code, stdout, _ = run(["--policy", saved_policy(root, 0), "--baseline", saved_policy(root, 1),
                           "--judge", f"lm:{judge_dir}", "--prompts", prompts, "--samples", 3, "--out", out,
                           "--save-samples", pairs, "--no-kl", *FAST], capsys)
    assert code == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["judge/name"] == f"lm:{judge_dir}" and m["counts/pairs"] == 6
    assert m["judge/score_a"] is None and m["judge/score_b"] is None  # pairwise: no score of each side
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert all(r["a"] != r["b"] for r in rows)  # two random policies: every pair is asked
    judge = LMJudge.from_folder(judge_dir, batch_size=1)  # unbatched: padding must not matter
    triples = list(zip(*[(r["prompt"], r["a"], r["b"]) for r in rows]))
    found = judge.margins(*triples)
    margins = [pair.margin for pair in found]
    verdicts = judge.compare_batch(*triples)  # what rlhfkit label would write for these pairs
    assert verdicts == [outcome(x, 0.0) for x in margins] and "a" in verdicts and "b" in verdicts
    assert m["judge/pairs/win_fraction"] == pytest.approx(verdicts.count("a") / 6)
    assert m["judge/pairs/loss_fraction"] == pytest.approx(verdicts.count("b") / 6)
    assert m["judge/score_delta"] == pytest.approx(sum(margins) / 6, abs=1e-4)
    assert m["judge/position_bias"] == pytest.approx(sum(p.position_bias for p in found) / 6, abs=1e-4)
    assert m["judge/score_delta_ci_low"] <= m["judge/score_delta"] <= m["judge/score_delta_ci_high"]
    assert f"lm:{judge_dir} margin" in stdout
