"""The demo's measuring stages: best-of-N with the reward model, the evaluation against SFT, the report.

Every policy — base, SFT, best-of-N, DPO, PPO — is compared with the SFT reference on the world's fixed
held-out eval prompts by the gold judge (the world's protocol through
:func:`rlhfkit.evaluate.protocol.evaluate_policy_pair`, with KL(policy ‖ SFT)). The SFT baseline is
sampled once (stream ``baseline``) and every policy from stream ``policy`` of the same seed, so the SFT
row — a second, independent SFT sample — is the noise floor of every figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.demo.pipeline import FAMILY_ORDER, Context
from rlhfkit.demo.runner import read_json, say, write_json_atomically

POLICIES = ("base", "sft", "best_of_n", "dpo", "ppo")


def eval_prompts(ctx: Context) -> list[str]:
    """The world's fixed eval prompts (100 per family), or the first ``eval.limit`` of each family."""
    limit = ctx.cfg.eval.limit
    out = []
    for family in FAMILY_ORDER:
        prompts = ctx.world.prompts("eval", family)
        out += [p.text for p in (prompts[:limit] if limit else prompts)]
    return out


# ----------------------------------------------------------------------------- 8. best-of-N


def best_of_n_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    """N samples of SFT per output, the reward model's favourite kept (K outputs per eval prompt)."""
    from rlhfkit.data.order import derive_seed
    from rlhfkit.demo.pipeline import sample_texts
    from rlhfkit.evaluate.best_of_n import best_of_n
    from rlhfkit.evaluate.sampling import PolicySamples
    from rlhfkit.judges.reward_model import RewardModelJudge

    cfg = ctx.cfg
    n, k = cfg.best_of_n.n, cfg.eval.samples
    prompts = eval_prompts(ctx)
    texts = sample_texts(ctx.model("sft"), ctx.tokenizer(), prompts, n * k, seed=derive_seed(cfg.seed, "demo", "bon"),
                         max_new_tokens=cfg.data.max_new_tokens, batch_size=cfg.data.batch_size,
                         desc=f"sampling {n}×{k} SFT candidates", chunk=max(1, 256 // n))
    judge = RewardModelJudge.from_folder(ctx.final("reward"))
    picked = best_of_n(None, ctx.tokenizer(), judge, prompts, n, k, seed=cfg.seed,
                       candidates=PolicySamples.from_texts(prompts, texts))
    write_json_atomically(folder / "best_of_n.json", {"prompts": prompts, "texts": picked.texts, "scores": picked.scores,
                                                      "n": n, "kl": picked.kl})
    flat = [s for row in picked.candidate_scores for s in row]
    chosen = [s for row in picked.scores for s in row]
    return {"n": n, "kl": picked.kl, "outputs": len(chosen), "mean_pick_score": sum(chosen) / len(chosen),
            "mean_candidate_score": sum(flat) / len(flat)}


# ----------------------------------------------------------------------------- 9. evaluation


def _policy_samples(ctx: Context, name: str, prompts: list[str], folder: Path):
    """``(model or None, samples, kl or None)`` of policy ``name`` (best-of-N: its picks, analytic KL)."""
    from rlhfkit.evaluate.sampling import PolicySamples

    if name == "best_of_n":
        saved = read_json(ctx.file("best_of_n", "best_of_n.json"))
        if saved["prompts"] != prompts:
            raise RuntimeError("best-of-N picks were made for other eval prompts; re-run the best_of_n stage")
        return None, PolicySamples.from_texts(prompts, saved["texts"]), saved["kl"]
    model = ctx.model(name)
    return model, sample_for_eval(ctx, model, prompts), None


def sample_for_eval(ctx: Context, model, prompts: list[str]):
    """A policy's eval samples: ``eval.samples`` per prompt at temperature 1 from stream ``policy`` of the
    run's seed (the SFT baseline is stream ``baseline``)."""
    from rlhfkit.evaluate.sampling import sample_policy, stream_seed

    cfg = ctx.cfg
    return sample_policy(model, ctx.tokenizer(), prompts, cfg.eval.samples, seed=stream_seed(cfg.seed, "policy"),
                         max_new_tokens=cfg.data.max_new_tokens, batch_size=cfg.data.batch_size)


def against_sft(ctx: Context, model, samples, baseline, prompts: list[str], kl: float | None = None) -> dict[str, Any]:
    """One policy's figures against the SFT baseline's samples: the world's protocol by the gold judge,
    KL(policy ‖ SFT) on the policy's samples (or ``kl`` when given; ``model`` None for best-of-N) and the
    win rates' bootstrap intervals."""
    from rlhfkit.evaluate.protocol import evaluate_policy_pair
    from rlhfkit.evaluate.report import win_rate_intervals

    cfg = ctx.cfg
    metrics = evaluate_policy_pair(model, ctx.model("sft"), ctx.tokenizer(), ctx.gold, prompts, cfg.eval.samples,
                                   seed=cfg.seed, policy_samples=samples, baseline_samples=baseline, kl=kl,
                                   n_bootstrap=cfg.eval.n_bootstrap, max_new_tokens=cfg.data.max_new_tokens)
    metrics.update(win_rate_intervals(ctx.gold, prompts, samples.texts, baseline.texts,
                                      n_bootstrap=cfg.eval.n_bootstrap, seed=cfg.seed))
    return metrics


def eval_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    """Each policy against SFT, gold judge, KL; one ``<policy>.json`` per policy (a killed stage keeps the
    finished ones), plus win-rate intervals."""
    from tqdm import tqdm

    from rlhfkit.evaluate.sampling import sample_policy, stream_seed

    cfg = ctx.cfg
    prompts = eval_prompts(ctx)
    sft, tokenizer = ctx.model("sft"), ctx.tokenizer()
    say(f"eval: {len(prompts)} eval prompts × {cfg.eval.samples} samples; sampling the SFT baseline")
    baseline = sample_policy(sft, tokenizer, prompts, cfg.eval.samples, seed=stream_seed(cfg.seed, "baseline"),
                             max_new_tokens=cfg.data.max_new_tokens, batch_size=cfg.data.batch_size)
    write_json_atomically(folder / "baseline_samples.json", {"prompts": prompts, "texts": baseline.texts})
    summary = {}
    for name in tqdm(POLICIES, desc="evaluating against SFT", unit="policy", dynamic_ncols=True):
        path = folder / f"{name}.json"
        if path.exists():
            summary[name] = read_json(path)["metrics"]["gold/utility_delta"]
            continue
        model, samples, kl = _policy_samples(ctx, name, prompts, folder)
        metrics = against_sft(ctx, model, samples, baseline, prompts, kl)
        write_json_atomically(path, {"metrics": metrics, "texts": samples.texts})
        summary[name] = metrics["gold/utility_delta"]
        say(f"eval: {name}: Δ utility {metrics['gold/utility_delta']:+.3f} "
            f"[{metrics['gold/utility_delta_ci_low']:+.3f}, {metrics['gold/utility_delta_ci_high']:+.3f}], "
            f"goal-only decisive win rate {_fmt(metrics.get('win_rate/goal_decisive'))}, "
            f"KL {_fmt(metrics.get('kl/nats_per_seq'))}, incoherent {_fmt(metrics.get('rates/a/incoherent'))}")
    return {"prompts": len(prompts), "samples": cfg.eval.samples, "utility_delta": summary}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


# ----------------------------------------------------------------------------- 10. report


def examples(ctx: Context, prompts: list[str], texts: dict[str, list[list[str]]]) -> list[dict[str, Any]]:
    """The first ``eval.examples_per_family`` eval prompts of each family with every policy's first sample,
    its gold behaviour and utility."""
    per_family = ctx.cfg.eval.examples_per_family
    rows, seen = [], {f: 0 for f in FAMILY_ORDER}
    for i, prompt in enumerate(prompts):
        family = ctx.world.lookup(prompt).family
        if seen[family] >= per_family:
            continue
        seen[family] += 1
        responses = {}
        for name, policy_texts in texts.items():
            judgement = ctx.gold.judge(prompt, policy_texts[i][0])
            responses[name] = {"text": policy_texts[i][0], "behaviour": judgement.behaviour,
                               "utility": judgement.utility}
        rows.append({"prompt": prompt, "family": family, "responses": responses})
    return rows


def notes(ctx: Context, results: dict) -> list[str]:
    cfg = ctx.cfg
    out = ["The SFT row compares a second, independent SFT sample with the baseline's: it is the noise floor "
           "(Δ utility ≈ 0, win rates ≈ 0.5, KL = 0).",
           f"Best-of-{cfg.best_of_n.n}'s KL is the analytic log N − (N − 1)/N (an upper bound when scores tie); "
           "the other KLs are estimated on the policy's samples (full-vocabulary sum, nats per sequence).",
           "Win rate with ties counted half is capped at 0.5 + (1 − g)/2 (in brackets), g = share of SFT samples "
           "already at utility 1: never read it alone.",
           "The reward model, DPO and PPO learn only from the simulated annotators' labels of SFT samples; the gold "
           "judge is used by evaluation, the annotators and the reward-hacking monitor, never by training."]
    if cfg.eval.limit:
        out.append(f"eval.limit={cfg.eval.limit}: only {cfg.eval.limit} eval prompts per family — a quick check, "
                   "not figures to report.")
    labels = results["labels"].summary
    if not labels.get("in_target"):
        out.append(f"The annotators' disagreement ({labels['disagreement']:.1%}) is outside the 20–30 % target: "
                   "the SFT samples offered too few pairs of distinct utility to calibrate on.")
    mode = results["ppo"].summary.get("monitor_mode")
    if mode == "passive":
        out.append("The reward-hacking monitor ran passively on PPO's held-out evaluations (PPO has no monitor "
                   "hook yet): it warns but keeps no best checkpoint and never stops the run.")
    import torch

    out.append(f"Times are wall-clock on this machine with {torch.get_num_threads()} torch threads; reused stages "
               "show the time they took when they ran.")
    return out


def build_report(ctx: Context, results: dict, *, preset: str, total_seconds: float) -> dict[str, Any]:
    """The ``report.json`` dict (keys in docs/demo.md)."""
    import dataclasses

    folder = results["eval"].folder
    policies, texts = {}, {}
    for name in POLICIES:
        saved = read_json(folder / f"{name}.json")
        policies[name], texts[name] = saved["metrics"], saved["texts"]
    prompts = read_json(folder / "baseline_samples.json")["prompts"]
    ppo = results["ppo"].summary
    hacking = dict(ppo.get("monitor") or {"verdict": "monitor disabled"})
    hacking["mode"] = ppo.get("monitor_mode")
    from rlhfkit.demo.instructgpt import report_section

    larger = report_section(ctx, results)
    return ({"instructgpt": larger} if larger else {}) | {
        "format": 1, "seed": ctx.cfg.seed, "preset": preset, "baseline": "sft", "judge": "gold",
        "eval_prompts": len(prompts), "eval_samples": ctx.cfg.eval.samples,
        "settings": dataclasses.asdict(ctx.cfg),
        "recipes": {s: str(ctx.out / "recipes" / f"{s}.yaml") for s in ("sft", "reward", "ppo", "dpo")},
        "world": results["world"].summary, "policies": policies,
        "sft": results["sft"].summary, "labels": results["labels"].summary,
        "reward_model": results["reward"].summary, "ppo": ppo, "dpo": results["dpo"].summary,
        "best_of_n": results["best_of_n"].summary, "hacking": hacking,
        "stages": {name: {"seconds": round(r.seconds, 1), "reused": r.reused} for name, r in results.items()},
        "total_seconds": total_seconds, "examples": examples(ctx, prompts, texts), "notes": notes(ctx, results),
    }


def write_run_report(ctx: Context, results: dict, *, preset: str, total_seconds: float) -> dict[str, Path]:
    from rlhfkit.engine.metrics_log import read_metrics
    from rlhfkit.evaluate.hacking import read_history
    from rlhfkit.evaluate.report import write_report

    report = build_report(ctx, results, preset=preset, total_seconds=total_seconds)
    ppo_folder = results["ppo"].folder
    metrics = [r for r in read_metrics(ppo_folder / "metrics.jsonl") if "objective/rm_score" in r]
    rollout = [json.loads(line) for line in (ppo_folder / "rollout_gold.jsonl").read_text().splitlines()
               if line.strip()] if (ppo_folder / "rollout_gold.jsonl").exists() else []
    checks = read_history(ppo_folder / "monitor" / "monitor.jsonl")
    return write_report(ctx.out, report, ppo_metrics=metrics, rollout_gold=rollout, checks=checks)
