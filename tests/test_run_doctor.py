"""The run doctor on synthetic metric histories: each symptom gives its warning with a fix; healthy runs give none."""

from __future__ import annotations

import pytest

from rlhfkit.engine.run_doctor import Thresholds, diagnose


def healthy_row(step: int) -> dict:
    """A plausible healthy step: KL growing slowly, moderate clipping, entropy and length roughly stable."""
    return {"step": step, "objective/kl": 0.1 * step, "ppo/ratio/max": 1.8, "ppo/policy/clipfrac": 0.05,
            "ppo/policy/approxkl": 0.002, "objective/entropy_per_token": 2.0 - 0.01 * step,
            "response/length_mean": 20.0 + 0.2 * step, "response/eos_rate": 0.95}


def history(n: int = 12, **changes) -> list[dict]:
    """``n`` healthy steps; ``changes[key]`` = function(step) -> value overrides that metric."""
    rows = [healthy_row(step) for step in range(1, n + 1)]
    for row in rows:
        for key, fn in changes.items():
            row[key.replace("__", "/")] = fn(row["step"])
    return rows


def kinds(rows, **kwargs) -> list[str]:
    return [w.kind for w in diagnose(rows, **kwargs)]


def test_healthy_run_and_empty_history_give_no_warning():
    assert diagnose([]) == []
    assert diagnose(history()) == []
    assert diagnose(history(2)) == []


def test_negative_kl_needs_a_sustained_negative_mean():
    rows = history(**{"objective__kl": lambda s: -0.3})
    (warning,) = diagnose(rows)
    assert warning.kind == "negative_kl" and warning.step == 12 and "-0.300" in warning.message
    assert "tokenizer" in warning.fix and "temperature" in warning.fix
    # one negative step among positive ones is noise, not a symptom
    assert kinds(history(**{"objective__kl": lambda s: -0.3 if s == 12 else 0.2})) == []
    # slightly negative, within the tolerance of a noisy k1 estimate
    assert kinds(history(**{"objective__kl": lambda s: -0.01})) == []


def test_ratio_explosion_needs_the_whole_window():
    rows = history(**{"ppo__ratio__max": lambda s: 25.0 if s >= 10 else 1.5})
    (warning,) = diagnose(rows)
    assert warning.kind == "ratio_explosion" and "25" in warning.message and warning.step == 12
    assert "train.lr" in warning.fix and "ppo.epochs" in warning.fix
    assert kinds(history(**{"ppo__ratio__max": lambda s: 25.0 if s >= 5 else 1.5})) == ["ratio_explosion"]
    assert kinds(history(**{"ppo__ratio__max": lambda s: 25.0 if 5 <= s <= 9 else 1.5})) == []  # recovered since
    assert kinds(rows, thresholds=Thresholds(ratio_max=30)) == []


def test_ratio_explosion_fires_at_once_when_the_mean_ratio_moved_too():
    rows = history(**{"ppo__ratio__max": lambda s: 260.0 if s == 12 else 1.5,
                      "ppo__ratio__mean": lambda s: 4.2 if s == 12 else 1.0})
    (warning,) = diagnose(rows)
    assert warning.kind == "ratio_explosion" and "4.2" in warning.message and warning.step == 12
    assert kinds(rows, thresholds=Thresholds(ratio_mean_max=5.0)) == []


# ppo/ratio/max of the demo recipe's PPO on its SFT and reward model: all 100 steps (normalised mean 0, shipped)
# and the first 32 with mean 0 / std 1; every spike above 10 is one or two tokens with a positive advantage,
# ppo/ratio/mean ≤ 1.023
DEMO_RATIO_MAX = {
    "mean": [9.4, 4.0, 13.5, 3.4, 3.7, 4.4, 3.0, 11.6, 5.3, 3.8, 2.5, 4.7, 3.2, 2.4, 6.5, 9.8, 3.0, 7.3, 3.9,
             2.2, 3.8, 10.5, 4.0, 3.4, 4.3, 8.6, 7.1, 3.5, 4.4, 5.7, 3.4, 5.3, 8.4, 3.7, 23.3, 9.2, 3.0, 2.8,
             2.4, 7.9, 3.0, 6.8, 13.0, 3.6, 19.9, 13.0, 3.3, 4.8, 13.1, 7.9, 11.7, 2.6, 6.0, 2.9, 4.1, 29.4,
             2.6, 2.5, 3.2, 3.5, 16.5, 3.4, 22.4, 9.1, 5.2, 2.3, 3.6, 7.0, 2.0, 2.0, 2.5, 3.2, 3.8, 3.7, 5.0,
             3.2, 8.1, 2.4, 5.4, 1.8, 25.9, 12.3, 2.9, 12.2, 3.5, 1.8, 2.1, 3.8, 8.8, 2.1, 2.3, 10.1, 3.2, 2.5,
             1.7, 2.4, 5.6, 3.5, 7.8, 2.2],
    "mean_std": [9.2, 4.1, 13.3, 2.5, 4.8, 5.9, 3.8, 5.6, 4.4, 2.8, 3.3, 3.1, 11.5, 4.7, 3.7, 4.1, 8.0, 7.2, 5.1, 2.3,
                 2.9, 5.2, 10.4, 41.1, 5.5, 8.8, 3.5, 27.2, 2.9, 2.9, 2.8, 5.6],
}


@pytest.mark.parametrize("run", DEMO_RATIO_MAX)
def test_the_demo_recipe_measured_gives_no_ratio_warning_at_any_step(run):
    maxima = DEMO_RATIO_MAX[run]
    for last in range(1, len(maxima) + 1):
        rows = history(last, **{"ppo__ratio__max": lambda s: maxima[s - 1], "ppo__ratio__mean": lambda s: 1.023})
        assert kinds(rows) == [], last


def test_one_rare_token_spiking_the_maximum_in_one_step_is_not_an_explosion():
    """The demo recipe (measured, steps 1-5): ppo/ratio/max 13.5 at step 3 from one token of 3,048, healthy otherwise."""
    maxima = {1: 9.4, 2: 4.0, 3: 13.5, 4: 3.4, 5: 3.7}
    for last in range(1, 6):
        rows = history(last, **{"ppo__ratio__max": lambda s: maxima[s], "ppo__ratio__mean": lambda s: 1.04})
        assert kinds(rows) == [], last


def test_clip_fraction_high_and_collapsed():
    high = history(**{"ppo__policy__clipfrac": lambda s: 0.5})
    assert kinds(high) == ["clipfrac_too_high"]
    collapsed = history(**{"ppo__policy__clipfrac": lambda s: 0.0, "ppo__policy__approxkl": lambda s: 0.0})
    (warning,) = diagnose(collapsed)
    assert warning.kind == "clipfrac_collapse" and "train.lr" in warning.fix
    # no clipping but the policy still moves (approxkl > 0): small updates, not a collapse
    assert kinds(history(**{"ppo__policy__clipfrac": lambda s: 0.0})) == []


def test_entropy_collapse_is_relative_to_the_start():
    rows = history(**{"objective__entropy_per_token": lambda s: 2.0 if s <= 6 else 0.2})
    (warning,) = diagnose(rows)
    assert warning.kind == "entropy_collapse" and "2.000" in warning.message and "kl.init_coef" in warning.fix
    assert kinds(history(**{"objective__entropy_per_token": lambda s: 2.0 if s <= 6 else 1.0})) == []


@pytest.mark.parametrize("late_length", [60.0, 8.0])
def test_length_drift_either_way(late_length):
    rows = history(**{"response__length_mean": lambda s: 20.0 if s <= 6 else late_length})
    (warning,) = diagnose(rows)
    assert warning.kind == "length_drift" and "missing_eos_penalty" in warning.fix


def test_eos_rate_drop_is_a_length_drift():
    rows = history(**{"response__eos_rate": lambda s: 0.9 if s <= 6 else 0.2})
    (warning,) = diagnose(rows)
    assert warning.kind == "length_drift" and "EOS rate" in warning.message


def test_rows_without_the_metric_are_skipped():
    rows = history(**{"objective__kl": lambda s: -0.3})
    rows.insert(6, {"event": "resume", "step": 6})
    rows.append({"step": 12, "eval/score": 0.1})  # an eval-only row
    assert kinds(rows) == ["negative_kl"]
    for row in rows:
        row.pop("objective/kl", None)
    assert kinds(rows) == []


def test_several_problems_at_once_and_str():
    rows = history(**{"objective__kl": lambda s: -1.0, "ppo__ratio__max": lambda s: 50.0,
                      "ppo__policy__clipfrac": lambda s: 0.6})
    warnings = diagnose(rows)
    assert [w.kind for w in warnings] == ["negative_kl", "ratio_explosion", "clipfrac_too_high"]
    assert str(warnings[1]).startswith("step 12: ppo/ratio/max is 50") and " — try: " in str(warnings[1])


# ----------------------------------------------------------------------------- a diverging loss (any stage)

LR10_SFT = [5.75, 1558.47, 1716.39, 2706.15, 2677.3, 1599.6, 2705.14, 1645.41]  # measured: micro model, lr 10


def losses(values) -> list[dict]:
    return [{"step": i + 1, "train/loss": v} for i, v in enumerate(values)]


def test_a_loss_that_diverged_without_going_nan_is_flagged():
    from rlhfkit.engine.run_doctor import check_loss

    warnings = check_loss(losses(LR10_SFT))
    assert [w.kind for w in warnings] == ["loss_divergence"] and warnings[0].step == 8
    assert "train.lr" in warnings[0].fix and "5.75 at the first step" in warnings[0].message
    assert check_loss(losses(LR10_SFT[:3])) == []  # too short to tell
    # diverging later: 1.26 falling to 0.4, then stuck around 4 (above the start, 10x the best)
    late = [1.26, 1.0, 0.8, 0.6, 0.45, 0.4, 0.42, 3.9, 4.1, 4.0]
    assert [w.kind for w in check_loss(losses(late))] == ["loss_divergence"]


@pytest.mark.parametrize("values", [
    [2.1, 1.9, 1.5, 1.2, 0.9, 0.7, 0.5, 0.4, 0.35, 0.3],  # SFT learning
    [0.693, 0.69, 0.6, 0.4, 0.2, 0.05, 0.01, 0.002, 0.03, 0.02, 0.04],  # DPO overfitting: noisy far below ln 2
    [1.2, 1.1, 1.0, 0.9, 2.5, 0.9, 0.85],  # one bad batch: not a whole window
    [0.7, 0.72, 0.75, 0.71, 0.73, 0.74, 0.76],  # flat noise above the first value, but not 3x the best
])
def test_normal_losses_are_not_flagged(values):
    from rlhfkit.engine.run_doctor import check_loss

    assert check_loss(losses(values)) == []
