"""PPO through the shared loop and the real CLI: it runs, logs every metric, saves standard folders, learns, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ppo_fixtures import ppo_config, save_policy_folder, save_prompts, save_reward_folder, tokenizer
from safetensors.torch import load_file

from rlhfkit.cli import main as cli
from rlhfkit.engine.metrics_log import read_metrics
from rlhfkit.rollout.score import FunctionScorer
from rlhfkit.trainers import ppo

REQUIRED_METRICS = [
    "objective/score", "objective/kl", "objective/kl_coef", "objective/entropy", "objective/rlhf_reward",
    "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/policy/loss", "ppo/val/loss", "ppo/val/clipfrac",
    "ppo/val/var_explained", "ppo/val/mean", "ppo/returns/mean", "ppo/ratio/mean", "ppo/ratio/max",
    "response/length_mean", "response/eos_rate",
]


def step_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "event" not in r]


def cli_args(root: Path, *extra: str) -> list[str]:
    return ["ppo", f"model.path={save_policy_folder(root)}", f"reward_model.path={save_reward_folder(root)}",
            f"data.train_file={save_prompts(root)}", f"data.eval_file={save_prompts(root, 4, 'eval.jsonl')}",
            f"train.output_dir={root / 'out'}", "train.per_device_batch_size=4", "train.max_steps=2",
            "train.progress_bar=false", "ppo.minibatch_size=2", "rollout.max_new_tokens=6",
            "data.max_prompt_length=32", "data.max_length=64", *extra]


def test_cli_run_logs_every_metric_and_saves_standard_folders(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    assert cli(cli_args(tmp_path, "rollout.print_samples=1")) == 0
    rows = step_rows(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2]
    for name in REQUIRED_METRICS:
        assert all(isinstance(r.get(name), float) for r in rows), name
    assert "eval/score" in rows[-1] and "eval/kl" in rows[-1]
    assert "[step 1 sample 0] score" in capsys.readouterr().err  # samples printed with score and KL
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    value = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "value_model")
    assert policy.config.vocab_size == len(tokenizer()) and value.config.num_labels == 1
    # the policy moved away from its start
    start = load_file(str(save_policy_folder(tmp_path) / "model.safetensors"))
    end = load_file(str(tmp_path / "out" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)
    # the same command again: the run is complete, nothing trains
    assert cli(cli_args(tmp_path, "rollout.print_samples=1")) == 0
    assert [r["step"] for r in step_rows(tmp_path / "out")] == [1, 2]


def test_cli_errors_are_one_sentence_naming_the_key(tmp_path, capsys):
    assert cli(cli_args(tmp_path, "ppo.minibatch_size=9")) == 2
    assert "ppo.minibatch_size (9)" in capsys.readouterr().err
    assert cli(cli_args(tmp_path, "ppo.epoch=2")) == 2
    assert "unknown key ppo.epoch" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["configs/ppo.yaml", "configs/ppo_lora.yaml"])
def test_recipes_run(tmp_path, recipe):
    root = Path(__file__).resolve().parents[1]
    args = cli_args(tmp_path, "train.max_steps=1", "lora.r=2")
    assert cli([args[0], "--config", str(root / recipe), *args[1:]]) == 0
    final = tmp_path / "out" / "final"
    assert (final / ("adapter_config.json" if "lora" in recipe else "config.json")).is_file()


def test_ppo_raises_the_score_of_a_known_scorer(tmp_path):
    """The reward: 1 if the response contains the letter "e". A random micro model rarely writes one."""
    cfg = ppo_config(tmp_path, "train.max_steps=14", "train.per_device_batch_size=16", "kl.init_coef=0.0",
                     "train.lr=3e-3", "train.lr_schedule=constant")
    summary = ppo.train(cfg, scorer=FunctionScorer(lambda prompt, text: float("e" in text), tokenizer()))
    assert summary.status == "completed"
    scores = [r["objective/score"] for r in step_rows(tmp_path / "out")]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert first < 0.4 and last > first + 0.3, scores


def test_resume_continues_exactly(tmp_path):
    """2 steps, then the same run extended to 4 (constant lr), equals 4 uninterrupted steps: weights, β
    (adaptive), sampling and prompt order all restored from the checkpoint."""
    common = ("train.lr_schedule=constant", "kl.controller=adaptive", "kl.target=0.01", "kl.horizon=50",
              "train.save_every=2", "train.per_device_batch_size=4", "ppo.minibatch_size=2",
              "train.keep_checkpoints_at_end=true")  # to train past the end of the 2-step run
    straight = ppo_config(tmp_path, *common, "train.max_steps=4", f"train.output_dir={tmp_path / 'a'}")
    ppo.train(straight)
    ppo.train(ppo_config(tmp_path, *common, "train.max_steps=2", f"train.output_dir={tmp_path / 'b'}"))
    ppo.train(ppo_config(tmp_path, *common, "train.max_steps=4", f"train.output_dir={tmp_path / 'b'}"))
    a, b = step_rows(tmp_path / "a"), step_rows(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("objective/score", "objective/kl", "objective/kl_coef", "ppo/policy/loss", "response/length_mean"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert len({r["objective/kl_coef"] for r in a}) == 4  # β did move, so its restore was tested
    weights_a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_run_doctor_warnings_are_recorded_as_events(tmp_path):
    # lr 0.5, no gradient clipping, four epochs: the importance ratios explode within the first step — the
    # bulk of the tokens, not one rare token (ppo/ratio/mean 4.2 measured)
    cfg = ppo_config(tmp_path, "train.max_steps=1", "train.lr=0.5", "ppo.epochs=4", "train.max_grad_norm=null")
    ppo.train(cfg)
    events = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if r.get("event") == "doctor"]
    row = step_rows(tmp_path / "out")[0]
    assert row["ppo/ratio/max"] > 10 and row["ppo/ratio/mean"] > 1.5, "lr 0.5 without clipping should blow up"
    explosions = [e for e in events if e["kind"] == "ratio_explosion"]
    assert len(explosions) == 1 and "train.lr" in explosions[0]["fix"] and explosions[0]["step"] == 1


class StopAtStep:
    """A stand-in reward-hacking monitor: checks every step, asks to stop at ``stop_step``."""

    def __init__(self, stop_step: int):
        self.stop_step, self.calls = stop_step, []

    def __call__(self, step, total, policy, tok):
        from types import SimpleNamespace

        self.calls.append(step)
        return SimpleNamespace(stop=step == self.stop_step, best_step=1,
                               metrics=lambda: {"hacking/judge_score": float(step)})

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


def test_monitor_hook_logs_checks_and_a_stop_ends_the_run_for_good(tmp_path):
    cfg = ppo_config(tmp_path, "train.max_steps=4", "train.save_every=10")
    monitor = StopAtStep(2)
    summary = ppo.train(cfg, monitor=monitor)
    assert summary.status == "completed" and monitor.calls == [1, 2]
    rows = step_rows(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2] and [r["hacking/judge_score"] for r in rows] == [1.0, 2.0]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()  # the stopped policy is the result
    again = ppo.train(ppo_config(tmp_path, "train.max_steps=4", "train.save_every=10"), monitor=StopAtStep(9))
    assert again.status == "already_complete" and again.step == 2


def test_bad_prompt_rows_fail_before_any_model_is_loaded(tmp_path, monkeypatch):
    from rlhfkit.errors import UserError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"promt": "a typo"}\n', encoding="utf-8")
    cfg = ppo_config(tmp_path, f"data.train_file={bad}")

    def no_models(*_args, **_kwargs):
        raise AssertionError("the models were loaded before the data was validated")

    monkeypatch.setattr(ppo.critic_free, "build_online_models", no_models)
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        ppo.train(cfg)
    with pytest.raises(UserError, match="bad.jsonl line 2"):  # the eval file too
        ppo.train(ppo_config(tmp_path, f"data.eval_file={bad}"))


def test_a_nonfinite_rollout_stops_the_cli_with_one_sentence(tmp_path, capsys):
    from safetensors.torch import save_file

    reward = save_reward_folder(tmp_path, "nan-reward")
    weights = load_file(str(reward / "model.safetensors"))
    head = [k for k in weights if k.startswith("score.")]
    assert head
    for key in head:  # a reward model whose every score is NaN
        weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(reward / "model.safetensors"), metadata={"format": "pt"})
    assert cli(cli_args(tmp_path, f"reward_model.path={reward}")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("rlhfkit ppo:"))
    assert "non-finite values at step 1" in line and "scores has non-finite entries" in line
    assert "lower lr" in line and not (tmp_path / "out" / "final").exists()
