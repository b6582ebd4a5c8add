"""``rlhfkit demo``: the whole RLHF recipe on the built-in world, measured by its gold judge, with a report.

    rlhfkit demo                                  # the default preset (≤ 15 minutes on 2 CPU cores)
    rlhfkit demo --preset quick --out runs/quick  # tiny budgets everywhere (< 3 minutes)
    rlhfkit demo --preset rlvr                    # GRPO + an exact-answer reward on SmolLM2-135M (rlvr.py)
    rlhfkit demo seed=1 ppo.train.max_steps=200   # any key of configs/demo.yaml, as key=value

Ten stages, each with a header, progress bars and its time (docs/demo.md):

 1. build or reuse the world's tokenizer and pretrained base model (cached)
 2. SFT on the spec's demonstrations (the fixed recipe; the reference for everything after)
 3. sample two responses per train prompt from SFT (temperature 1)
 4. simulated annotators label the pairs (τ calibrated on these samples; the same labels feed 5 and 7)
 5. reward model from SFT (Bradley–Terry), measured against gold on held-out pairs
 6. PPO from SFT with the reward model (value model from the reward model), reward-hacking monitor on
 7. DPO (+NLL, i.e. RPO) from SFT on the same labels
 8. best-of-N with the reward model, a baseline that needs no training
 9. base, SFT, best-of-N, DPO and PPO against SFT by the gold judge on the fixed eval prompts (+ KL)
10. report: ``report.json``, ``report.md``, ``report.html`` in the run folder

Re-running the same command reuses every finished stage and resumes a killed one; ``seed`` makes the run
reproducible. Library entry point: :func:`run_demo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from rlhfkit.demo.config import STAGE_DEFAULTS, DemoConfig

__all__ = ["DemoConfig", "STAGE_DEFAULTS", "PRESETS", "configure", "load_demo_config", "main", "preset_path",
           "run_demo"]

PRESETS = {"default": "demo.yaml", "quick": "demo_quick.yaml", "instructgpt": "demo_instructgpt.yaml",
           "rlvr": "demo_rlvr.yaml"}
TOTAL_STAGES = 10


def preset_path(preset: str) -> Path | None:
    """``configs/<preset file>`` of the source tree, or None when the package runs without its configs
    folder (then the default preset is :class:`DemoConfig`'s defaults, which equal ``configs/demo.yaml``)."""
    from rlhfkit.errors import UserError

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    path = Path(__file__).resolve().parents[2] / "configs" / PRESETS[preset]
    if path.exists():
        return path
    if preset == "default":
        return None
    raise UserError(f"preset {preset!r} needs {path}, which is missing; pass --config FILE instead")


def load_demo_config(preset: str = "default", config: str | None = None, overrides: list[str] | tuple = (),
                     out: str | None = None) -> DemoConfig:
    """The run's settings: ``config`` (or the preset's file), then ``key=value`` overrides, then ``--out``."""
    from rlhfkit.config import load_config

    path = config if config is not None else preset_path(preset)
    extra = list(overrides) + ([f"out={out}"] if out else [])
    return load_config(DemoConfig, path, extra)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default (≤ 15 min on 2 cores), quick (< 3 min, tiny budgets), instructgpt (the "
                             "default plus a 9x larger SFT-only model to beat; ~30 min more) or rlvr (GRPO "
                             "with an exact-answer reward on the real SmolLM2-135M-Instruct)")
    parser.add_argument("--config", "-c", help="a demo recipe instead of the preset's (see configs/demo.yaml)")
    parser.add_argument("--out", help="the run folder (default: the recipe's out, runs/demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides, e.g. seed=1 ppo.train.max_steps=200 eval.limit=20")


def main(args: argparse.Namespace) -> int:
    if args.preset == "rlvr":
        return _main_rlvr(args)
    cfg = load_demo_config(args.preset, args.config, args.overrides, args.out)
    report = run_demo(cfg, preset=args.config or args.preset)
    print(f"demo: report in {Path(cfg.out) / 'report.html'} (also report.md, report.json)")
    print_table(report)
    return 0


def _main_rlvr(args: argparse.Namespace) -> int:
    """``--preset rlvr``: GRPO with an exact-answer reward on SmolLM2 (:mod:`rlhfkit.demo.rlvr`)."""
    from rlhfkit.config import load_config
    from rlhfkit.demo.rlvr import RLVRDemoConfig, run_rlvr

    path = args.config if args.config is not None else preset_path("rlvr")
    cfg = load_config(RLVRDemoConfig, path, list(args.overrides) + ([f"out={args.out}"] if args.out else []))
    report = run_rlvr(cfg, preset=args.config or "rlvr")
    acc = report["accuracy"]
    print(f"demo: report in {Path(cfg.out) / 'report.md'} (also report.json)")
    print(f"accuracy on {acc['problems']} held-out problems: {100 * acc['before']:.1f} % -> "
          f"{100 * acc['after']:.1f} %, gain {100 * acc['gain']:+.1f} pts "
          f"[{100 * acc['gain_ci_low']:+.1f}, {100 * acc['gain_ci_high']:+.1f}] (95 %), "
          f"{report['total_seconds'] / 60:.1f} min")
    return 0


def run_demo(cfg: DemoConfig, *, preset: str = "default") -> dict[str, Any]:
    """Run (or resume, reusing finished stages) the ten stages; return the report dict (``report.json``)."""
    import torch

    from rlhfkit.demo import evaluation, instructgpt, pipeline, ppo_stage
    from rlhfkit.demo.runner import Runner, fingerprint, write_json_atomically
    from rlhfkit.judges import GoldJudge
    from rlhfkit.worlds import World
    from rlhfkit.worlds.build import resolve_precision

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # world.mixed_precision=auto resolved once, up front: the world stage's fingerprint, the saved settings and
    # the larger model then name the precision the world is actually built in (see resolve_precision)
    cfg = dataclasses.replace(cfg, world=resolve_precision(cfg.world))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = pipeline.Context(cfg, out)
    ctx.passive_monitor = cfg.hacking.enabled and not ppo_stage.supports_monitor_hook()
    configs = pipeline.write_recipes(ctx)  # every stage's recipe validated before any work
    pipeline.save_settings(ctx)
    larger = cfg.larger.enabled
    larger_sft_config = instructgpt.larger_sft_config(ctx) if larger else None  # validated before any work
    runner = Runner(out, TOTAL_STAGES + 3 * larger)
    results = runner.results
    seed = {"seed": cfg.seed}
    recipe = {s: _recipe_dict(c) for s, c in configs.items()}

    from rlhfkit.worlds.build import build_world, load_built, world_fingerprint

    # what the world is: its build settings and the world code's own settings (a changed world re-makes all)
    world_settings = {"build": cfg.world.settings(), "world": world_fingerprint(cfg.world.tools)}
    runner.stage(1, "world", "World: tokenizer and pretrained base model (cached)", world_settings, (),
                 lambda f: pipeline.world_stage(ctx, f))

    ctx.assets = load_built(cfg.world) or build_world(cfg.world)  # the cache may have been cleared since
    ctx.world = World.build(cfg.world.seed)
    ctx.gold = GoldJudge(ctx.world)
    runner.stage(2, "sft", "SFT on the spec's demonstrations", recipe["sft"], ("world",),
                 lambda f: pipeline.sft_stage(ctx, f, configs["sft"]))
    runner.stage(3, "samples", "Sampling two responses per prompt from SFT", {**seed, **_asdict(cfg.data)},
                 ("sft",), lambda f: pipeline.samples_stage(ctx, f))
    runner.stage(4, "labels", "Simulated annotators label the pairs", {**seed, **_asdict(cfg.annotators),
                 "heldout_fraction": cfg.data.heldout_fraction}, ("samples",), lambda f: pipeline.labels_stage(ctx, f))
    runner.stage(5, "reward", "Reward model from SFT (Bradley–Terry)", recipe["reward"], ("labels",),
                 lambda f: pipeline.reward_stage(ctx, f, configs["reward"]))
    runner.stage(6, "ppo", "PPO from SFT with the reward model", {"recipe": recipe["ppo"],
                 "hacking": _asdict(cfg.hacking), "hook": not ctx.passive_monitor}, ("reward",),
                 lambda f: ppo_stage.ppo_stage(ctx, f, configs["ppo"]))
    runner.stage(7, "dpo", "DPO (+NLL) from SFT on the same labels", recipe["dpo"], ("labels",),
                 lambda f: pipeline.dpo_stage(ctx, f, configs["dpo"]))
    runner.stage(8, "best_of_n", f"Best-of-{cfg.best_of_n.n} with the reward model",
                 {**seed, "n": cfg.best_of_n.n, "eval": _asdict(cfg.eval), "data": _asdict(cfg.data)}, ("reward",),
                 lambda f: evaluation.best_of_n_stage(ctx, f))
    runner.stage(9, "eval", "Evaluation against SFT with the gold judge",
                 {**seed, "eval": _asdict(cfg.eval), "data": _asdict(cfg.data)},
                 ("world", "sft", "ppo", "dpo", "best_of_n"), lambda f: evaluation.eval_stage(ctx, f))
    if larger:
        _run_larger_stages(runner, ctx, larger_sft_config)
    runner.header(runner.total, "Report")
    started = time.perf_counter()
    paths = evaluation.write_run_report(ctx, results, preset=preset, total_seconds=runner.elapsed())
    report_seconds = time.perf_counter() - started
    write_json_atomically(out / "demo.json", {
        "format": 1, "preset": preset, "seed": cfg.seed, "out": str(out), "argv": sys.argv[1:],
        "settings_fingerprint": fingerprint(_asdict(cfg)), "total_seconds": runner.elapsed(),
        "stages": {**runner.times(), "report": {"seconds": round(report_seconds, 1), "reused": False}},
        "summaries": {name: r.summary for name, r in results.items()},
        "report": {k: str(v) for k, v in paths.items()},
    })
    from rlhfkit.demo.runner import read_json

    return read_json(paths["json"])


def _run_larger_stages(runner, ctx, sft_config) -> None:
    """Stages 10–12 of ``--preset instructgpt``: the larger base model, its SFT, every policy against it."""
    from rlhfkit.demo import instructgpt, pipeline

    cfg, seed = ctx.cfg, {"seed": ctx.cfg.seed}
    world = cfg.larger.world(cfg.world)
    runner.stage(10, "larger_world", f"Larger base model ({cfg.larger.size}) on the same corpus (cached)",
                 _asdict(world), (), lambda f: instructgpt.larger_world_stage(ctx, f))
    runner.stage(11, "larger_sft", "SFT of the larger base model (the same SFT recipe)", _asdict(sft_config),
                 ("larger_world",), lambda f: pipeline.sft_stage(ctx, f, sft_config))
    small, big = (runner.results[s].summary["base_parameters"] for s in ("world", "larger_world"))
    runner.stage(12, "instructgpt", "InstructGPT in miniature: small policies against the larger SFT model",
                 {**seed, "eval": _asdict(cfg.eval), "data": _asdict(cfg.data)}, ("eval", "larger_sft"),
                 lambda f: instructgpt.instructgpt_stage(ctx, f, small, big))


def _asdict(obj: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def _recipe_dict(config: Any) -> dict:
    return _asdict(config)


def print_table(report: dict[str, Any]) -> None:
    """The results table on the terminal (the report's headline columns)."""
    from rlhfkit.evaluate.plots import LABELS
    from rlhfkit.evaluate.report import POLICY_ORDER, format_cell

    columns = (("Δ utility [95% CI]", "gold/utility_delta", "ci"), ("goal-dec. win", "win_rate/goal_decisive", "f3"),
               ("decisive win", "win_rate/decisive", "f3"), ("KL", "kl/nats_per_seq", "f2"),
               ("incoherent", "rates/a/incoherent", "pct"))
    rows = [[LABELS.get(n, n)] + [format_cell(report["policies"][n], k, f) for _, k, f in columns]
            for n in POLICY_ORDER if n in report.get("policies", {})]
    header = ["policy"] + [c[0] for c in columns]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
