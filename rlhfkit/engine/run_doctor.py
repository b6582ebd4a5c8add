"""The run doctor: a PPO run's metrics history in, warnings with a concrete fix out. Pure; standard library only.

Each check reads the metrics of ``docs/metrics.md (PPO)`` from the history (one dict per step, oldest first; rows
without a metric, e.g. event lines, are skipped for that metric) and looks at the last ``window`` steps, so that
one noisy step does not raise an alarm. That holds for the importance ratio too: ``ppo/ratio/max`` is a maximum
over every token of every update of a step (about 3,000 token-updates in the demo), an extreme value that one
rare token can set. On the demo's recipe (its SFT and reward model, all 100 steps measured) 16 steps went
above 10 (at most 29.4), each through one or two tokens of ~3,000, every one with a positive advantage — the
clip already gave it no gradient — and never three steps in a row; the steps' 99.9th percentiles stayed
≤ 8.1, approxkl 0.007–0.062, clipfrac 0.015–0.071. The failures it stands for either keep it high step
after step (old log-probs that do not match the sampling policy, a learning rate too high) or move the bulk
of the tokens at once, which the step's mean ratio shows (lr 0.5 on a micro model: ppo/ratio/mean 4.2,
approxkl 2233, against a largest minibatch mean of 1.18 in the demo's 100 steps): either one warns.

=====================  ===========================================  ===============================================
kind                   fires when                                   usual cause
=====================  ===========================================  ===============================================
``negative_kl``        objective/kl (k1) < −tolerance on average     reference and policy read different tokens or
                       and < 0 at every step of the window           templates, or logprobs not ÷ temperature
``ratio_explosion``    ppo/ratio/max > ratio_max at every step of    lr too high, too many epochs, old logprobs that
                       the window, or once with ppo/ratio/mean >
                       ratio_mean_max
                                                                     do not match the sampling policy
``clipfrac_too_high``  ppo/policy/clipfrac > clipfrac_max            updates too large for the trust region
``clipfrac_collapse``  clipfrac and approxkl ≈ 0 over the window     the policy does not move
``entropy_collapse``   entropy per token < entropy_floor × its start  the policy turned (near) deterministic
``length_drift``       response length ×/÷ length_factor from start,  the reward model prefers length, or
                       or EOS rate down to < eos_floor × its start    responses stopped ending
``loss_divergence``    train/loss above its first value and above     lr too high: the run diverged without
                       loss_factor × its best window mean, at every   going NaN (any stage: the loop checks it)
                       step of the window
=====================  ===========================================  ===============================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DoctorWarning:
    kind: str  # one of the kinds in the module docstring
    step: int | None  # the last step of the history the warning is about
    message: str  # what was measured
    fix: str  # what to try

    def __str__(self) -> str:
        where = f"step {self.step}: " if self.step is not None else ""
        return f"{where}{self.message} — try: {self.fix}"


@dataclass(frozen=True)
class Thresholds:
    window: int = 3  # steps a condition must hold (the last `window` values of the metric)
    kl_tolerance: float = 0.05  # nats per sequence below 0 that the window's mean KL may reach
    ratio_max: float = 10.0  # ppo/ratio/max, a maximum over every token-update of a step (see the docstring)
    ratio_mean_max: float = 1.5  # ppo/ratio/mean: the clip acts at 1 ± 0.2, healthy steps stay within a few %
    clipfrac_max: float = 0.3  # ppo/policy/clipfrac above it: clipfrac_too_high
    clipfrac_min: float = 1e-4  # ppo/policy/clipfrac below it (with approxkl ≈ 0): clipfrac_collapse
    approxkl_low: float = 1e-6
    entropy_floor: float = 0.2  # fraction of the starting entropy per token
    length_factor: float = 2.0  # mean length multiplied or divided by this from the start
    eos_floor: float = 0.5  # fraction of the starting EOS rate
    loss_factor: float = 3.0  # train/loss this many times its best window mean (and above its first value)


def _series(history: Sequence[Mapping[str, object]], key: str) -> list[tuple[int | None, float]]:
    """(step, value) of every row holding a finite number under ``key``."""
    out = []
    for row in history:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            step = row.get("step")
            out.append((step if isinstance(step, int) else None, float(value)))
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _recent(series: list[tuple[int | None, float]], n: int) -> list[float] | None:
    return [v for _, v in series[-n:]] if len(series) >= n else None


def _check_kl(history, t: Thresholds) -> list[DoctorWarning]:
    series = _series(history, "objective/kl")
    recent = _recent(series, t.window)
    if recent is None or not (all(v < 0 for v in recent) and _mean(recent) < -t.kl_tolerance):
        return []
    return [DoctorWarning(
        "negative_kl", series[-1][0],
        f"objective/kl is negative ({_mean(recent):.3f} nats/sequence over the last {t.window} steps); a k1 "
        "estimate of KL(π‖π_ref) on the policy's own samples is ≥ 0 on average, so the log-probs disagree",
        "check that the reference and the policy share the tokenizer and chat template, that both log-probs "
        "use logits ÷ rollout.temperature, and that top_p/top_k are off (they sample from another distribution)")]


def _check_ratio(history, t: Thresholds) -> list[DoctorWarning]:
    series = _series(history, "ppo/ratio/max")
    if not series or series[-1][1] <= t.ratio_max:
        return []
    step, value = series[-1]
    recent = _recent(series, t.window)
    means = _series(history, "ppo/ratio/mean")
    mean = means[-1][1] if means and means[-1][0] == step else None
    if mean is not None and mean > t.ratio_mean_max:
        what = f"and the mean ratio {mean:.3g} (> {t.ratio_mean_max:g}): most tokens moved far from when sampled"
    elif recent is not None and min(recent) > t.ratio_max:
        what = f"above {t.ratio_max:g} at each of the last {t.window} steps: tokens keep becoming far likelier"
    else:  # one step's extreme token, the bulk unmoved: a tail event of a max over thousands of token-updates
        return []
    return [DoctorWarning(
        "ratio_explosion", step,
        f"ppo/ratio/max is {value:.3g}, {what} than when sampled",
        "lower train.lr, use fewer ppo.epochs or a smaller ppo.clip_range, and check that the rollout's old "
        "logprobs match the sampling policy (same temperature, dropout off)")]


def _check_clipfrac(history, t: Thresholds) -> list[DoctorWarning]:
    clip, approxkl = _series(history, "ppo/policy/clipfrac"), _series(history, "ppo/policy/approxkl")
    recent_clip, recent_kl = _recent(clip, t.window), _recent(approxkl, t.window)
    if recent_clip is None:
        return []
    if min(recent_clip) > t.clipfrac_max:
        return [DoctorWarning(
            "clipfrac_too_high", clip[-1][0],
            f"ppo/policy/clipfrac is {_mean(recent_clip):.2f} over the last {t.window} steps (> {t.clipfrac_max}): "
            "most updates leave the trust region",
            "lower train.lr, use fewer ppo.epochs or larger ppo.minibatch_size")]
    if max(recent_clip) < t.clipfrac_min and (recent_kl is None or max(recent_kl) < t.approxkl_low):
        return [DoctorWarning(
            "clipfrac_collapse", clip[-1][0],
            f"ppo/policy/clipfrac ≈ 0 and approxkl ≈ 0 for {t.window} steps: the policy is not moving",
            "raise train.lr (check the schedule has not decayed it to 0), and check the advantages are not all "
            "zero (a constant score, or kl.init_coef so large that the KL term dominates)")]
    return []


def _check_entropy(history, t: Thresholds) -> list[DoctorWarning]:
    series = _series(history, "objective/entropy_per_token")
    if len(series) < 2 * t.window:
        return []
    start, now = _mean([v for _, v in series[: t.window]]), _mean(_recent(series, t.window))
    if not (start > 0 and now < t.entropy_floor * start):
        return []
    return [DoctorWarning(
        "entropy_collapse", series[-1][0],
        f"entropy per token fell from {start:.3f} to {now:.3f} nats (< {t.entropy_floor:g} × its start): the "
        "policy is close to deterministic and will stop exploring",
        "raise kl.init_coef (or lower kl.target), lower train.lr, or check the reward model is not "
        "rewarding one fixed answer")]


def _check_length(history, t: Thresholds) -> list[DoctorWarning]:
    warnings = []
    lengths = _series(history, "response/length_mean")
    if len(lengths) >= 2 * t.window:
        start, now = _mean([v for _, v in lengths[: t.window]]), _mean(_recent(lengths, t.window))
        if start > 0 and (now > t.length_factor * start or now < start / t.length_factor):
            warnings.append(DoctorWarning(
                "length_drift", lengths[-1][0],
                f"mean response length drifted from {start:.1f} to {now:.1f} tokens",
                "the reward model may be scoring length: check its scores against length, raise kl.init_coef, "
                "set ppo.missing_eos_penalty so over-long responses cost, or lower rollout.max_new_tokens"))
    eos = _series(history, "response/eos_rate")
    if len(eos) >= 2 * t.window and not warnings:
        start, now = _mean([v for _, v in eos[: t.window]]), _mean(_recent(eos, t.window))
        if start > 0 and now < t.eos_floor * start:
            warnings.append(DoctorWarning(
                "length_drift", eos[-1][0],
                f"the EOS rate fell from {start:.2f} to {now:.2f}: responses stop ending and run to max_new_tokens",
                "set ppo.missing_eos_penalty (e.g. -1) so unfinished responses cost, raise kl.init_coef"))
    return warnings


def check_loss(history, t: Thresholds | None = None, key: str = "train/loss") -> list[DoctorWarning]:
    """A loss that diverged without going NaN (e.g. SFT at lr 10: 5.75 at step 1, then 800-2700 to the end).

    Fires when every loss of the last window is above both the first loss — the untrained model's, which
    training should only lower — and ``loss_factor`` × its best level (the lowest mean of any earlier
    window, or the first loss if lower). Both are needed: losses that start at ln 2 (DPO, reward) and sink
    towards 0 are noisy far below their start, and a run that blows up at step 2 has no lower level to
    compare with but its first step.
    """
    t = t or Thresholds()
    series = _series(history, key)
    if len(series) < t.window + 1:
        return []
    values = [v for _, v in series]
    earlier = values[: -t.window]
    means = [_mean(earlier[i : i + t.window]) for i in range(len(earlier) - t.window + 1)]
    best = min([values[0], *means])  # the first step counts as a level reached (a blow-up at step 2)
    recent = values[-t.window :]
    if not (min(recent) > values[0] and min(recent) > t.loss_factor * best):
        return []
    return [DoctorWarning(
        "loss_divergence", series[-1][0],
        f"{key} diverged: {_mean(recent):.4g} over the last {t.window} steps, against {values[0]:.4g} at the "
        f"first step and {best:.4g} at its best",
        "lower train.lr (or use warm-up), keep train.max_grad_norm on, and check the data for extreme rows")]


CHECKS = (_check_kl, _check_ratio, _check_clipfrac, _check_entropy, _check_length)


def diagnose(history: Sequence[Mapping[str, object]], thresholds: Thresholds | None = None) -> list[DoctorWarning]:
    """Warnings about the run so far (empty when healthy). ``history``: metric dicts per step, oldest first."""
    t = thresholds or Thresholds()
    return [warning for check in CHECKS for warning in check(history, t)]
