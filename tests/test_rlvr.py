"""RL with a verifiable reward: the word problems, the accuracy measurement and ``rlhfkit demo --preset rlvr``
end to end on a tiny model (the real SmolLM2 run is the README's figure, not a test)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from rlhfkit.evaluate.accuracy import accuracy_summary, answer_problems
from rlhfkit.worlds.word_problems import KINDS, word_problems


def _sum_from_text(kind: str, text: str) -> int:
    """The answer recomputed from the problem's words (not from the generator's numbers)."""
    numbers = [int(x) for x in re.findall(r"\d+", text)]
    return {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
            "two_step": lambda a, b, c: a + b - c}[kind](*numbers)


def test_word_problems_answers_follow_from_their_text_and_held_out_sums_are_never_trained_on():
    train, held_out = word_problems("train", 1200), word_problems("eval", 300)
    assert word_problems("eval", 300) == held_out  # a pure function of its arguments
    for row in train + held_out:
        text = row["prompt"][0]["content"]
        assert row["answer"] == str(_sum_from_text(row["kind"], text))
        assert int(row["answer"]) >= 0
    key = lambda row: (row["kind"], tuple(re.findall(r"\d+", row["prompt"][0]["content"])))  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in held_out}
    assert len({r["prompt"][0]["content"] for r in held_out}) == 300
    assert {k: sum(r["kind"] == k for r in held_out) for k in KINDS} == {k: 75 for k in KINDS}
    with pytest.raises(ValueError, match="split"):
        word_problems("test", 3)


def test_accuracy_summary_by_hand():
    before, after = [1, 0, 0, 1, 0, 1, 0, 0], [1, 1, 0, 0, 1, 1, 1, 0]
    s = accuracy_summary(before, after, n_bootstrap=400)
    assert (s["before"], s["after"], s["gain"]) == (3 / 8, 5 / 8, 2 / 8)
    assert (s["fixed"], s["broken"]) == (3 / 8, 1 / 8)
    assert s["gain_ci_low"] <= s["gain"] <= s["gain_ci_high"] and s["gain_ci_low"] < 0  # 8 problems prove little
    # the interval is paired: the same gain from problems that all moved together is certain
    same = accuracy_summary([0] * 8, [1] * 8, n_bootstrap=200)
    assert same["gain_ci_low"] == same["gain_ci_high"] == 1.0
    with pytest.raises(ValueError, match="same non-empty"):
        accuracy_summary([1], [1, 0])


def test_greedy_answers_match_transformers_generate_and_are_checked_by_their_last_number():
    from test_evaluate_common import micro_policy, world_tokenizer

    from rlhfkit.data.formats import PromptRow

    tok, model = world_tokenizer(), micro_policy(seed=3, logit_scale=4.0)
    rows = [PromptRow(prompt=p, origin=f"row {i}", fields={"answer": a})
            for i, (p, a) in enumerate([("what is 2 plus 3?", "5"), ("how many people live in bemus?", "22"),
                                        ("what is 7 minus 4?", "3")])]
    got = answer_problems(model, tok, rows, max_new_tokens=12, batch_size=2)
    for row, text, ok in zip(rows, got.texts, got.correct):  # an independent greedy decode, one row at a time
        ids = tok.apply_chat_template([{"role": "user", "content": row.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        expected = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert text == expected
        numbers = re.findall(r"\d+", text)
        assert ok == int(bool(numbers) and numbers[-1] == row.fields["answer"])
    with pytest.raises(ValueError, match="row 0: the row has no 'answer'"):
        answer_problems(model, tok, [PromptRow(prompt="x", origin="row 0")], max_new_tokens=2)


@pytest.mark.slow
def test_rlvr_preset_end_to_end_on_a_tiny_chat_model(tmp_path):
    from rlhfkit.cli import main as cli
    from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer

    texts = [r["prompt"][0]["content"] + " " + r["answer"] for r in word_problems("train", 200)]
    tok = train_tokenizer(texts, vocab_size=400, style="qwen2")
    torch.manual_seed(0)
    model_dir = save_tiny(build_tiny_model("qwen2", "micro", tok, seed=0), tok, tmp_path / "tiny")
    out = tmp_path / "run"
    args = ["demo", "--preset", "rlvr", "--out", str(out), f"model.path={model_dir}", "problems.train=64",
            "problems.eval=24", "eval.max_new_tokens=8", "eval.batch_size=8", "eval.n_bootstrap=50",
            "grpo.train.max_steps=2", "grpo.train.per_device_batch_size=4", "grpo.train.save_every=0",
            "grpo.rollout.n=2", "grpo.ppo.minibatch_size=8", "grpo.train.progress_bar=false", "threads=1"]
    assert cli(args) == 0
    report = json.loads((out / "report.json").read_text())
    before = [json.loads(x)["correct"] for x in (out / "03-before" / "answers.jsonl").read_text().splitlines()]
    after = [json.loads(x)["correct"] for x in (out / "05-after" / "answers.jsonl").read_text().splitlines()]
    assert report["accuracy"]["problems"] == len(before) == len(after) == 24
    assert report["accuracy"]["gain"] == pytest.approx((sum(after) - sum(before)) / 24)
    assert (out / "04-grpo" / "final" / "adapter_config.json").is_file()  # LoRA: a PEFT adapter folder
    assert "held-out problems" in (out / "report.md").read_text()
    recipe = (out / "recipes" / "grpo.yaml").read_text()
    assert "exact_answer" in recipe and "max_steps: 2" in recipe
    assert cli(args) == 0  # every stage reused
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert all(stage["reused"] for stage in stages.values())


def test_a_training_budget_other_than_the_measured_one_is_refused_in_one_sentence():
    from rlhfkit.config import ConfigError, load_config
    from rlhfkit.demo.rlvr import RLVRDemoConfig

    assert load_config(RLVRDemoConfig, "configs/demo_rlvr.yaml", ["grpo.rollout.max_new_tokens=48"])
    with pytest.raises(ConfigError, match=r"grpo.rollout.max_new_tokens \(32\) must equal eval.max_new_tokens \(48\)"):
        load_config(RLVRDemoConfig, "configs/demo_rlvr.yaml", ["grpo.rollout.max_new_tokens=32"])
