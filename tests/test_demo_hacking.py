"""The reward-hacking monitor (rlhfkit/evaluate/hacking.py): the paired drop, the divergence rule, warnings,
stopping, the best checkpoint by the judge, resume, and the PPO hook on a real (micro) policy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.evaluate.hacking import (
    HackingMonitor,
    MonitorConfig,
    MonitorPoint,
    is_diverging,
    judge_drop_since_best,
    read_history,
    relative_drift,
)

try:
    from test_evaluate_common import micro_policy, some_world_prompts, world_tokenizer
except ImportError:  # pragma: no cover - run from the repository root
    from tests.test_evaluate_common import micro_policy, some_world_prompts, world_tokenizer


class LengthJudge:
    """score = sign · number of words (a proxy that loves length, or a judge that hates it)."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign, self.name = sign, "length"

    def score(self, prompt, response):
        return self.sign * len(response.split())


PROMPTS = [f"prompt {i}" for i in range(8)]


def feed(monitor: HackingMonitor, step: int, judge_per_sample: list[float], proxy: float, words: int = 4):
    responses = [" ".join(["w"] * words)] * len(PROMPTS)
    return monitor.observe(step, PROMPTS, responses, [proxy] * len(PROMPTS), judge_scores=judge_per_sample, kl=0.1 * step)


def test_paired_drop_and_its_standard_error_by_hand():
    # d = best − now = [1, 0, 0, 1]: mean 0.5; sample std sqrt(4 · 0.25 / 3) = sqrt(1/3); se = that / 2.
    mean, se = judge_drop_since_best([1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0])
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert judge_drop_since_best([0.3, 0.3], [0.3, 0.3]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        judge_drop_since_best([1.0], [1.0, 2.0])


def test_divergence_needs_proxy_up_judge_down_beyond_noise():
    best = MonitorPoint(10, proxy=0.0, judge=0.5, kl=1.0, length=5, n=8)
    up = MonitorPoint(20, proxy=0.4, judge=0.3, kl=2.0, length=5, n=8)
    assert is_diverging(best, up, drop=0.2, stderr=0.05, judge_drop=0.05, z=2.0)
    assert not is_diverging(best, up, drop=0.2, stderr=0.15, judge_drop=0.05, z=2.0)  # within 2 s.e.
    assert not is_diverging(best, up, drop=0.04, stderr=0.0, judge_drop=0.05, z=2.0)  # below the threshold
    down = MonitorPoint(20, proxy=-0.1, judge=0.3, kl=2.0, length=5, n=8)
    assert not is_diverging(best, down, drop=0.2, stderr=0.0, judge_drop=0.05, z=2.0)  # proxy fell too
    assert relative_drift(10.0, 15.0) == pytest.approx(0.5)
    assert relative_drift(0.0, 3.0) == 0.0


def test_warns_after_patience_and_stops_only_when_asked(tmp_path, capsys):
    config = MonitorConfig(every=1, patience=2, judge_drop=0.05, z=2.0, stop=True)
    monitor = HackingMonitor(PROMPTS, LengthJudge(), LengthJudge(), config, out_dir=tmp_path)
    noise = [0.02 * ((-1) ** i) for i in range(len(PROMPTS))]  # paired differences with a small spread
    first = feed(monitor, 10, [0.5 + e for e in noise], proxy=0.0)
    assert first.improved and first.best_step == 10 and not first.diverging
    better = feed(monitor, 20, [0.6 + e for e in noise], proxy=0.2)  # both rise: healthy
    assert better.improved and better.best_step == 20 and not better.diverging
    worse = feed(monitor, 30, [0.4 + e for e in reversed(noise)], proxy=0.5)
    assert worse.diverging and worse.streak == 1 and not worse.warnings and not worse.stop
    assert worse.judge_drop == pytest.approx(0.2)
    worst = feed(monitor, 40, [0.3 + e for e in noise], proxy=0.8)
    assert worst.diverging and worst.streak == 2 and worst.stop
    assert worst.best_step == 20 and worst.best_judge == pytest.approx(0.6)
    assert "exploiting the reward model" in worst.warnings[0]
    assert "hacking monitor" in capsys.readouterr().err
    recovered = feed(monitor, 50, [0.62 + e for e in noise], proxy=0.9)
    assert recovered.improved and recovered.streak == 0 and not recovered.stop
    metrics = worst.metrics()
    assert metrics["hacking/diverging"] == 1.0 and metrics["hacking/best_step"] == 20.0
    assert metrics["hacking/kl"] == pytest.approx(4.0)
    assert [r["step"] for r in read_history(tmp_path / "monitor.jsonl")] == [10, 20, 30, 40, 50]


def test_without_stop_a_confirmed_divergence_only_warns():
    monitor = HackingMonitor(PROMPTS, LengthJudge(), LengthJudge(), MonitorConfig(patience=1, stop=False))
    feed(monitor, 1, [0.5] * 8, proxy=0.0)
    check = feed(monitor, 2, [0.2] * 8, proxy=1.0)
    assert check.diverging and check.warnings and not check.stop


def test_length_drift_is_reported():
    monitor = HackingMonitor(PROMPTS, LengthJudge(), LengthJudge(), MonitorConfig(length_drift=0.5))
    assert not feed(monitor, 1, [0.5] * 8, proxy=0.0, words=4).warnings
    check = feed(monitor, 2, [0.5] * 8, proxy=0.0, words=7)
    assert check.length_drift == pytest.approx(0.75)
    assert any("drifted" in w for w in check.warnings)


def test_a_resumed_run_forgets_checks_from_the_killed_runs_future(tmp_path):
    config = MonitorConfig(patience=1)
    monitor = HackingMonitor(PROMPTS, LengthJudge(), LengthJudge(), config, out_dir=tmp_path)
    for step, judge in ((10, 0.5), (20, 0.7), (30, 0.1)):
        feed(monitor, step, [judge] * 8, proxy=step / 10)
    state = json.loads(json.dumps(monitor.state_dict()))  # what a checkpoint at step 20 would not hold …
    resumed = HackingMonitor(PROMPTS, LengthJudge(), LengthJudge(), config, out_dir=tmp_path)
    resumed.load_state_dict(state)
    check = feed(resumed, 20, [0.7] * 8, proxy=2.0)  # … the resumed run re-checks step 20
    assert [p.step for p in resumed.history] == [10, 20]
    assert [r["step"] for r in read_history(tmp_path / "monitor.jsonl")] == [10, 20]
    assert check.improved and check.best_step == 20


def test_config_is_validated():
    with pytest.raises(ConfigError):
        MonitorConfig(every=0).validate()
    with pytest.raises(ConfigError):
        MonitorConfig(length_drift=0).validate()
    with pytest.raises(ValueError):
        HackingMonitor([], LengthJudge(), LengthJudge())


def test_the_ppo_hook_samples_scores_keeps_the_best_and_leaves_the_rng_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy, reference, tokenizer = micro_policy(seed=1).train(), micro_policy(seed=2), world_tokenizer()
    prompts = some_world_prompts(1)
    config = MonitorConfig(every=5, max_new_tokens=6, samples_per_prompt=2)
    monitor = HackingMonitor(prompts, LengthJudge(1.0), LengthJudge(-1.0), config, reference=reference,
                             out_dir=tmp_path)
    assert monitor(3, 100, policy, tokenizer) is None  # not due
    rng = torch.get_rng_state()
    check = monitor(5, 100, policy, tokenizer)
    assert torch.equal(rng, torch.get_rng_state())  # its own generator: training randomness untouched
    assert policy.training  # its training flag restored
    assert check.point.n == 2 * len(prompts) and check.point.kl is not None and check.point.kl > 0
    # proxy and judge are opposite signs of the same length: their means mirror each other
    assert check.point.proxy == pytest.approx(-check.point.judge)
    assert check.improved and check.saved is not None
    saved = AutoModelForCausalLM.from_pretrained(check.saved)  # plain transformers loads the best policy
    assert json.loads((tmp_path / "best_by_judge" / "monitor_best.json").read_text())["step"] == 5
    assert torch.equal(saved.get_input_embeddings().weight, policy.get_input_embeddings().weight)
    again = monitor(10, 100, policy, tokenizer)  # same weights, same seed: the same samples
    assert again.point.judge == pytest.approx(check.point.judge) and not again.improved
    assert monitor(100, 100, policy, tokenizer) is not None  # the last step is always checked
