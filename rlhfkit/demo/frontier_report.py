"""``rlhfkit frontier``'s outputs: ``frontier.json``, ``frontier.md`` and its two plots (PNG, the report's style).

- :func:`frontier_plot` — Δ mean gold utility against SFT (95 % bootstrap interval) against KL(policy ‖ SFT),
  DPO's and PPO's points as two series, each annotated with its β: the reward–KL frontier of the DPO paper
  (Rafailov et al. 2023, Fig. 2) with the gold judge as the reward;
- :func:`kl_penalty_plot` — PPO's training rollouts, one colour per β: the proxy (reward-model) score and the
  gold utility against their KL as training goes on. Reward hacking is the proxy still rising while the
  gold utility falls (Gao et al. 2022); the KL penalty is what keeps a run out of that region.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.demo.runner import write_json_atomically
from rlhfkit.evaluate.plots import COLOURS, LABELS, _figure, _png, _series
from rlhfkit.evaluate.report import _md_table, format_cell, json_ready

# The figures of a point kept in frontier.json (keys of its eval.json's metrics).
POINT_KEYS = ("kl/nats_per_seq", "gold/utility_delta", "gold/utility_delta_ci_low", "gold/utility_delta_ci_high",
              "gold/utility_a", "win_rate/goal_decisive", "win_rate/goal_decisive_ci_low",
              "win_rate/goal_decisive_ci_high", "win_rate/ties_half", "rates/a/incoherent", "length/a/mean_words",
              "proxy/score", "proxy/score_sft")
# (column header, metric key, format of rlhfkit.evaluate.report.format_cell)
TABLE_COLUMNS = (("KL nats/seq", "kl/nats_per_seq", "f2"), ("Δ gold utility [95 % CI]", "gold/utility_delta", "ci"),
                 ("goal-only decisive win [CI]", "win_rate/goal_decisive", "ci"), ("proxy score", "proxy/score", "f3"),
                 ("incoherent", "rates/a/incoherent", "pct"), ("mean words", "length/a/mean_words", "f1"))


def point_record(ctx, point, evaluation: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """One point of ``frontier.json``: what it is, where its files are, its figures."""
    rollout = point.policy_dir / "rollout_gold.jsonl"
    return {"name": point.name, "method": point.method, "beta": point.beta, "reused": point.reused,
            "policy_dir": str(point.policy_dir / "final"), "eval_file": str(ctx.out / "frontier" / point.name / "eval.json"),
            "steps": training.get("steps"), "monitor": (training.get("monitor") or {}).get("verdict"),
            "rollout_gold": str(rollout) if rollout.exists() else None,
            "metrics": {k: evaluation["metrics"].get(k) for k in POINT_KEYS}}


def write_frontier(ctx, points: Sequence[Any], evals: Mapping[str, Mapping[str, Any]],
                   trained: Mapping[str, Mapping[str, Any]], *, recipe_betas: Mapping[str, float],
                   seconds: float) -> dict[str, Any]:
    """Write ``frontier.json``, ``frontier.md``, ``frontier.png``, ``kl_penalty.png`` in ``<run>/frontier``;
    return the ``frontier.json`` dict."""
    folder = ctx.out / "frontier"
    records = [point_record(ctx, p, evals[p.name], trained[p.name]) for p in points]
    result = json_ready({
        "format": 1, "run": str(ctx.out), "baseline": "sft", "judge": "gold", "seed": ctx.cfg.seed,
        "eval_prompts": len(next(iter(evals.values()))["texts"]) if evals else 0, "eval_samples": ctx.cfg.eval.samples,
        "eval_limit": ctx.cfg.eval.limit, "recipe_betas": dict(recipe_betas), "seconds": seconds, "points": records,
    })
    curves = {f"β = {r['beta']:g}" + (" (no KL penalty)" if r["beta"] == 0 else "")
              + (" (the recipe's)" if r["beta"] == recipe_betas.get("ppo") else ""): read_rows(r["rollout_gold"])
              for r in sorted(records, key=lambda r: r["beta"]) if r["method"] == "ppo" and r["rollout_gold"]}
    images = {"frontier": frontier_plot(records), "kl_penalty": kl_penalty_plot(curves)}
    for key, png in images.items():
        if png is not None:
            (folder / f"{key}.png").write_bytes(png)
    write_json_atomically(folder / "frontier.json", result)
    text = render_markdown(result, [k for k, png in images.items() if png is not None])
    tmp = folder / ".frontier.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(folder / "frontier.md")
    return result


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- markdown


def _rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in result["points"]:
        source = "the demo's own run" if r["reused"] else f"frontier/{r['name']}"
        rows.append([LABELS.get(r["method"], r["method"]), f"{r['beta']:g}"]
                    + [format_cell(r["metrics"], key, kind) for _, key, kind in TABLE_COLUMNS]
                    + [str(r["steps"] if r["steps"] is not None else "—"), source])
    return rows


def markdown_table(result: Mapping[str, Any]) -> str:
    """The points as a markdown table (method, β, KL, Δ gold [CI], goal-only decisive, proxy score, …)."""
    return _md_table(["method", "β"] + [c[0] for c in TABLE_COLUMNS] + ["steps", "policy"], _rows(result))


def render_markdown(result: Mapping[str, Any], images: Sequence[str]) -> str:
    sft_proxy = next((r["metrics"]["proxy/score_sft"] for r in result["points"]
                      if isinstance(r["metrics"].get("proxy/score_sft"), int | float)), None)
    parts = ["# rlhfkit frontier — DPO and PPO β sweeps against SFT", "",
             f"Run `{result['run']}`. Every policy against the SFT reference on the world's fixed eval prompts "
             f"({result['eval_prompts']} prompts × {result['eval_samples']} samples, the demo's saved SFT baseline "
             "samples and seeds), judged by the gold judge; KL(policy ‖ SFT) in nats per sequence on the policy's "
             "samples. The proxy score is the reward model's mean score of the same samples"
             + (f" (SFT's: {sft_proxy:+.3f})." if sft_proxy is not None else "."), "",
             markdown_table(result), ""]
    titles = {"frontier": "Gold utility against KL (the reward–KL frontier)",
              "kl_penalty": "What the KL penalty buys: PPO's training rollouts, proxy and gold against KL"}
    for key in images:
        parts += [f"## {titles[key]}", "", f"![{titles[key]}]({key}.png)", ""]
    monitors = [r for r in result["points"] if r["method"] == "ppo" and r.get("monitor")]
    if monitors:
        parts += ["## Reward-hacking monitor (held-out prompts, gold judge)", ""]
        parts += [f"- PPO β = {r['beta']:g}: {r['monitor']}" for r in monitors] + [""]
    betas = result.get("recipe_betas", {})
    parts += [f"- The recipes' β: DPO {betas.get('dpo', '—')}, PPO {betas.get('ppo', '—')}. A point marked as the "
              "demo's own run is the demo's policy with its stage-9 figures, not retrained.",
              "- Every other point trained with the run's recipe with only β changed (PPO: the fixed KL controller) "
              "and any `--set` keys: the same data, budget and seed, so the points differ by β alone."]
    if result.get("eval_limit"):
        parts.append(f"- eval.limit={result['eval_limit']}: only {result['eval_limit']} eval prompts per family — a "
                     "quick check, not figures to report.")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def frontier_plot(points: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Δ gold utility (95 % interval) against KL, one series per method, each point labelled with its β."""
    drawn = [p for p in points if _number(p["metrics"].get("kl/nats_per_seq")) is not None
             and _number(p["metrics"].get("gold/utility_delta")) is not None]
    if not drawn:
        return None
    fig, (ax,) = _figure(7, 4.6)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.plot([0.0], [0.0], "D", color=COLOURS["sft"], label="SFT (the reference)")
    for method in ("dpo", "ppo"):
        series = sorted((p for p in drawn if p["method"] == method), key=lambda p: p["beta"])
        if not series:
            continue
        xs = [p["metrics"]["kl/nats_per_seq"] for p in series]
        ys = [p["metrics"]["gold/utility_delta"] for p in series]
        lows = [_number(p["metrics"].get("gold/utility_delta_ci_low")) for p in series]
        highs = [_number(p["metrics"].get("gold/utility_delta_ci_high")) for p in series]
        err = [[y - lo if lo is not None else 0.0 for y, lo in zip(ys, lows)],
               [hi - y if hi is not None else 0.0 for y, hi in zip(ys, highs)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", color=COLOURS[method], capsize=3, lw=1.0,
                    label=f"{LABELS[method]} (β sweep)")
        for p, x, y in zip(series, xs, ys):  # DPO's labels above its points, PPO's below: fewer overlaps
            ax.annotate(f"β={p['beta']:g}" + (" (demo)" if p["reused"] else ""), (x, y), textcoords="offset points",
                        xytext=(5, 5 if method == "dpo" else -11), fontsize=7, color=COLOURS[method])
    ax.set(xlabel="KL(policy ‖ SFT), nats per sequence", ylabel="Δ mean gold utility vs SFT",
           title="Gold utility against KL: DPO and PPO β sweeps (95 % intervals)")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """``out[i] = mean(values[max(0, i − window + 1) : i + 1])`` (trailing, shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def kl_penalty_plot(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes | None:
    """Left: proxy score, right: gold utility, of each step's training rollouts against their KL; one colour
    per run (``curves``: label → ``rollout_gold.jsonl`` rows ``{"step", "proxy", "gold", "kl"}``). Each step
    is a faint dot; the line is the trailing mean over a tenth of the run, in step order."""
    curves = {label: sorted(rows, key=lambda r: r["step"]) for label, rows in curves.items() if rows}
    if not curves:
        return None
    from matplotlib import colormaps

    fig, (proxy_ax, gold_ax) = _figure(11, 4.2, 2)
    palette = colormaps["viridis"]
    for i, (label, rows) in enumerate(curves.items()):
        colour = palette(0.85 * i / max(1, len(curves) - 1))
        window = max(1, round(len(rows) / 10))
        for ax, key in ((proxy_ax, "proxy"), (gold_ax, "gold")):
            kl, score = _series(rows, key, "kl")
            ax.scatter(kl, score, s=6, color=colour, alpha=0.25)
            ax.plot(moving_average(kl, window), moving_average(score, window), color=colour, lw=1.8, label=label)
    proxy_ax.set(xlabel="KL(policy ‖ SFT) of the rollouts, nats per sequence", ylabel="proxy score (reward model)",
                 title="Proxy score: what PPO maximises")
    gold_ax.set(xlabel="KL(policy ‖ SFT) of the rollouts, nats per sequence", ylabel="gold utility",
                title="Gold utility: what we wanted")
    for ax in (proxy_ax, gold_ax):
        ax.legend(fontsize=7, loc="best", title="PPO, fixed β", title_fontsize=7)
    return _png(fig)
