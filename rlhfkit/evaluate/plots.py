"""The report's plots as PNG bytes (matplotlib's Agg canvas; pyplot's global state is never touched).

Each function takes plain data — metric rows, monitor checks, the report's per-policy figures — and
returns the PNG of one figure, or None when there is nothing to draw. ``report.py`` embeds them in
``report.html`` as base64 and writes them beside it.

- :func:`ppo_training_curves` — PPO's score and KL by step (``metrics.jsonl``; the gold utility of the same
  training rollouts when the demo recorded it);
- :func:`gold_vs_proxy` — the proxy (reward model) and the gold judge against KL: where they part is
  reward hacking (Gao et al. 2022);
- :func:`behaviour_bars` — per-family behaviour rates of every policy;
- :func:`win_rates` — Δ gold utility and win rates against the baseline, with their intervals.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

# The behaviour rates drawn, in order (keys ``rates/a/<name>``; docs/world.md §8), with their labels.
BEHAVIOUR_RATES = (
    ("helpful_correct", "helpful:\ncorrect"), ("wrong", "helpful:\nwrong"),
    ("harmful_compliance", "harmful:\ncomplies"), ("over_refusal", "benign:\nover-refuses"),
    ("confabulation", "unanswerable:\nconfabulates"), ("sycophantic_agreement", "sycophancy:\nagrees"),
    ("incoherent", "incoherent\n(all families)"),
)
COLOURS = {"base": "#9e9e9e", "sft": "#4c72b0", "best_of_n": "#8172b2", "dpo": "#dd8452", "ppo": "#55a868"}
LABELS = {"base": "base", "sft": "SFT", "best_of_n": "best-of-N", "dpo": "DPO", "ppo": "PPO"}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _series(rows: Sequence[Mapping[str, Any]], key: str, x_key: str = "step") -> tuple[list, list]:
    pairs = [(r[x_key], r[key]) for r in rows if isinstance(r.get(key), int | float) and r.get(x_key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ppo_training_curves(metrics: Sequence[Mapping[str, Any]], rollout_gold: Sequence[Mapping[str, Any]] = (),
                        checks: Sequence[Mapping[str, Any]] = ()) -> bytes | None:
    """Left: the reward model's score of each step's rollouts (``objective/rm_score``), their gold utility
    (``rollout_gold`` rows ``{"step", "gold"}``) and the held-out checks; right: KL per sequence
    (``objective/kl``) and the held-out checks' KL."""
    steps, score = _series(metrics, "objective/rm_score")
    if not steps:
        return None
    fig, (left, right) = _figure(10, 3.6, 2)
    left.plot(steps, score, color="#dd8452", lw=1.2, label="proxy: reward model (train rollouts)")
    gold_steps, gold = _series(rollout_gold, "gold")
    if gold_steps:
        left.plot(gold_steps, gold, color="#55a868", lw=1.2, label="gold utility (train rollouts)")
    check_steps, check_proxy = _series(checks, "proxy")
    if check_steps:
        left.plot(check_steps, check_proxy, "o--", color="#dd8452", ms=4, label="proxy (held-out)")
        left.plot(*_series(checks, "judge"), "s--", color="#55a868", ms=4, label="gold (held-out)")
    left.set(xlabel="PPO step", ylabel="score", title="Score during PPO")
    left.legend(fontsize=7, loc="best")
    kl_steps, kl = _series(metrics, "objective/kl")
    right.plot(kl_steps, kl, color="#4c72b0", lw=1.2, label="KL of train rollouts (k1)")
    check_kl_steps, check_kl = _series(checks, "kl")
    if check_kl_steps:
        right.plot(check_kl_steps, check_kl, "o--", color="#4c72b0", ms=4, label="KL held-out (full)")
    right.set(xlabel="PPO step", ylabel="nats per sequence", title="KL(policy ‖ SFT) during PPO")
    right.legend(fontsize=7, loc="best")
    return _png(fig)


def gold_vs_proxy(checks: Sequence[Mapping[str, Any]], rollout_gold: Sequence[Mapping[str, Any]] = (),
                  best_step: int | None = None) -> bytes | None:
    """Proxy score (left axis) and gold utility (right axis) against KL from the reference.

    ``checks``: the monitor's held-out checks (``{"step", "kl", "proxy", "judge"}``); ``rollout_gold``:
    per-step training rollouts (``{"kl", "proxy", "gold"}``), drawn faint. The best check by the gold
    judge is marked."""
    kl, proxy = _series(checks, "proxy", "kl")
    roll_kl, roll_proxy = _series(rollout_gold, "proxy", "kl")
    if not kl and not roll_kl:
        return None
    fig, (ax,) = _figure(6.5, 4)
    gold_ax = ax.twinx()
    if roll_kl:
        ax.scatter(roll_kl, roll_proxy, s=6, color="#dd8452", alpha=0.25, label="proxy, train rollouts")
        gold_ax.scatter(*_series(rollout_gold, "gold", "kl"), s=6, color="#55a868", alpha=0.25,
                        label="gold, train rollouts")
    if kl:
        ax.plot(kl, proxy, "o-", color="#dd8452", label="proxy (reward model), held-out")
        gold_kl, gold = _series(checks, "judge", "kl")
        gold_ax.plot(gold_kl, gold, "s-", color="#55a868", label="gold utility, held-out")
        for check in checks:
            if best_step is not None and check.get("step") == best_step and check.get("kl") is not None:
                gold_ax.plot([check["kl"]], [check["judge"]], marker="*", ms=14, color="#c44e52",
                             ls="none", label=f"best by gold (step {best_step})")
    ax.set(xlabel="KL(policy ‖ SFT), nats per sequence", ylabel="proxy score (reward model)",
           title="Gold vs proxy score against KL")
    gold_ax.set_ylabel("gold utility")
    handles = ax.get_legend_handles_labels()
    more = gold_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="lower right")
    return _png(fig)


def behaviour_bars(policies: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Grouped bars: for each behaviour rate, one bar per policy (``rates/a/<rate>`` of its figures)."""
    names = [n for n in policies if any(isinstance(policies[n].get(f"rates/a/{r}"), int | float)
                                        for r, _ in BEHAVIOUR_RATES)]
    if not names:
        return None
    fig, (ax,) = _figure(10, 3.8)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [policies[name].get(f"rates/a/{rate}") for rate, _ in BEHAVIOUR_RATES]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(BEHAVIOUR_RATES))]
        ax.bar(xs, [v if isinstance(v, int | float) else 0.0 for v in values], width,
               color=COLOURS.get(name), label=LABELS.get(name, name))
    ax.set_xticks(range(len(BEHAVIOUR_RATES)), [label for _, label in BEHAVIOUR_RATES], fontsize=8)
    ax.set(ylabel="rate among the family's samples", ylim=(0, 1), title="Behaviour per family (gold judge)")
    ax.legend(fontsize=8, ncols=len(names))
    return _png(fig)


def _interval_plot(ax, names: Sequence[str], policies: Mapping[str, Mapping[str, Any]], key: str,
                   offset: float, marker: str, label: str) -> None:
    labelled = False
    for i, name in enumerate(names):
        value = policies[name].get(key)
        if not isinstance(value, int | float):
            continue
        low, high = policies[name].get(f"{key}_ci_low"), policies[name].get(f"{key}_ci_high")
        err = None
        if isinstance(low, int | float) and isinstance(high, int | float):
            err = [[max(0.0, value - low)], [max(0.0, high - value)]]
        ax.errorbar([i + offset], [value], yerr=err, fmt=marker, color=COLOURS.get(name, "k"), capsize=3,
                    label=None if labelled else label)
        labelled = True


def win_rates(policies: Mapping[str, Mapping[str, Any]], baseline: str = "sft") -> bytes | None:
    """Left: Δ mean gold utility against the baseline with its bootstrap interval; right: the decisive,
    goal-only decisive and ties-half win rates with their intervals (0.5 = no better than the baseline)."""
    names = [n for n in policies if isinstance(policies[n].get("gold/utility_delta"), int | float)]
    if not names:
        return None
    fig, (left, right) = _figure(10, 3.6, 2)
    _interval_plot(left, names, policies, "gold/utility_delta", 0.0, "o", "Δ utility")
    left.axhline(0.0, color="k", lw=0.8)
    left.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names])
    left.set(ylabel=f"mean gold utility − {LABELS.get(baseline, baseline)}'s",
             title="Δ gold utility (95 % interval)")
    for key, offset, marker, label in (("win_rate/decisive", -0.2, "o", "decisive"),
                                       ("win_rate/goal_decisive", 0.0, "s", "goal-only decisive"),
                                       ("win_rate/ties_half", 0.2, "^", "ties counted half")):
        _interval_plot(right, names, policies, key, offset, marker, label)
    right.axhline(0.5, color="k", lw=0.8)
    right.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names])
    right.set(ylabel="win rate", ylim=(0, 1), title=f"Win rates against {LABELS.get(baseline, baseline)}")
    right.legend(fontsize=7, loc="lower right")
    return _png(fig)
