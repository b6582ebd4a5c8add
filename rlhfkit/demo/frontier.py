"""``rlhfkit frontier``: β sweeps of DPO and PPO on a finished demo run — what the KL penalty buys, and the
reward–KL frontier of the DPO paper (Rafailov et al. 2023, Fig. 2) measured by the world's gold judge.

    rlhfkit frontier --run runs/demo                      # DPO β ∈ {0.03, 0.1, 0.3}, PPO β ∈ {0, 0.03, 0.1, 0.3}
    rlhfkit frontier --run runs/demo --dpo-betas 0.05 0.5 --ppo-betas 0 0.1
    rlhfkit frontier --run runs/demo --set ppo.train.max_steps=50   # a key of the run's ppo or dpo recipe

Five stages, each with a header (the demo's):

1. the run: its settings, its stage recipes (``recipes/{dpo,ppo}.yaml``) and the built-in world's gold judge;
   the run must be finished and made by the current world code (else one sentence says what to do);
2. DPO from the run's SFT on the run's labels, with the run's dpo recipe and ``beta=β``, into
   ``<run>/frontier/dpo-beta{β}/``;
3. PPO from the run's SFT with the run's reward model, ``kl.init_coef=β`` with the fixed controller, through
   the demo's own PPO stage (so ``rollout_gold.jsonl`` and the reward-hacking monitor's history exist), into
   ``<run>/frontier/ppo-beta{β}/``;
4. every policy against SFT exactly as the demo's stage 9 measures it — the same eval prompts, the same
   saved SFT baseline samples (``09-eval/baseline_samples.json``), the same seeds — plus the mean proxy
   (reward-model) score of its eval samples: ``<run>/frontier/<name>/eval.json``;
5. ``frontier.json``, ``frontier.md``, ``frontier.png`` (Δ gold utility against KL, both methods) and
   ``kl_penalty.png`` (PPO's proxy score and gold utility against KL along training, per β).

The demo's own DPO and PPO are reused, not retrained, when a swept β gives exactly the demo's recipe (its β,
no ``--set``): their point is ``dpo-demo`` / ``ppo-demo``, measured by the demo's stage 9. With ``--set``
the budgets differ from the demo's, so the recipe's β is trained again beside the others (equal budgets).
Re-running the same command skips finished runs and evaluations and resumes a killed one; a run whose
recipe or upstream stage changed starts over. Library entry point: :func:`run_frontier`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.demo.config import DemoConfig, merge
from rlhfkit.demo.pipeline import STAGE_FOLDERS, Context
from rlhfkit.demo.runner import MANIFEST, Runner, fingerprint, read_json, say, write_json_atomically
from rlhfkit.errors import UserError

__all__ = ["DEFAULT_DPO_BETAS", "DEFAULT_PPO_BETAS", "Point", "configure", "main", "measure_policy", "open_run",
           "plan_points", "run_frontier"]

DEFAULT_DPO_BETAS = (0.03, 0.1, 0.3)
DEFAULT_PPO_BETAS = (0.0, 0.03, 0.1, 0.3)
METHODS = ("dpo", "ppo")
# The demo stage whose output each method's training reads last (its fingerprint covers everything upstream).
UPSTREAM = {"dpo": "labels", "ppo": "reward"}
FINISHED_STAGES = ("world", "sft", "samples", "labels", "reward", "ppo", "dpo", "eval")
TOTAL_STAGES = 5


@dataclass
class Point:
    """One policy of the sweep."""

    method: str  # "dpo" or "ppo"
    beta: float  # DPO's β, or PPO's fixed KL coefficient
    name: str  # its folder under <run>/frontier/: "<method>-beta<β>", or "<method>-demo" for the demo's own
    policy_dir: Path  # the training folder (final/ inside): <run>/frontier/<name>, or the demo's 06-ppo / 07-dpo
    reused: bool  # the demo's own run, not trained here
    recipe: Path | None  # <run>/frontier/recipes/<name>.yaml (None when reused)
    fingerprint: str  # of the training run: its recipe and upstream stages (the demo's stage fingerprint if reused)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a finished `rlhfkit demo` run folder (e.g. runs/demo)")
    parser.add_argument("--dpo-betas", nargs="+", type=float, default=list(DEFAULT_DPO_BETAS), metavar="β",
                        help=f"DPO's β values (default: {' '.join(map(str, DEFAULT_DPO_BETAS))})")
    parser.add_argument("--ppo-betas", nargs="+", type=float, default=list(DEFAULT_PPO_BETAS), metavar="β",
                        help=f"PPO's fixed KL coefficients (default: {' '.join(map(str, DEFAULT_PPO_BETAS))})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's setting)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the run's recipes for every swept run, e.g. "
                             "--set ppo.train.max_steps=50 --set dpo.train.num_epochs=1")


def main(args: argparse.Namespace) -> int:
    result = run_frontier(args.run, dpo_betas=args.dpo_betas, ppo_betas=args.ppo_betas, threads=args.threads,
                          overrides=args.overrides)
    from rlhfkit.demo.frontier_report import markdown_table

    folder = Path(result["run"]) / "frontier"
    print(f"frontier: {folder / 'frontier.md'} (also frontier.json, frontier.png, kl_penalty.png)")
    print(markdown_table(result))
    return 0


def run_frontier(run: str | Path, *, dpo_betas=DEFAULT_DPO_BETAS, ppo_betas=DEFAULT_PPO_BETAS,
                 threads: int | None = None, overrides: list[str] | tuple = ()) -> dict[str, Any]:
    """Train (or reuse) every swept policy, evaluate each against SFT, write the frontier's files; return
    the ``frontier.json`` dict."""
    import torch

    from rlhfkit.demo.evaluation import eval_prompts

    started = time.perf_counter()
    header = Runner(Path(run), TOTAL_STAGES).header
    header(1, "The run: settings, recipes, world and gold judge")
    check_arguments(dpo_betas, ppo_betas, threads)
    ctx = open_run(run)
    if threads or ctx.cfg.threads:
        torch.set_num_threads(threads or ctx.cfg.threads)
    points = plan_points(ctx, {"dpo": dpo_betas, "ppo": ppo_betas}, overrides)
    prompts = eval_prompts(ctx)
    baseline = saved_baseline(ctx, prompts)
    say("frontier: " + ", ".join(f"{p.name} (β={p.beta:g}" + (", the demo's own)" if p.reused else ")")
                                 for p in points))
    trained = {}
    for number, method, title in ((2, "dpo", "DPO β sweep from SFT on the run's labels"),
                                  (3, "ppo", "PPO β sweep (fixed β) from SFT with the run's reward model")):
        header(number, title)
        for point in (p for p in points if p.method == method):
            trained[point.name] = train_point(ctx, point)
    header(4, "Evaluation against SFT with the gold judge (the demo's protocol)")
    evals = evaluate_points(ctx, points, prompts, baseline)
    header(5, "Frontier: frontier.json, frontier.md, frontier.png, kl_penalty.png")
    from rlhfkit.demo.frontier_report import write_frontier

    result = write_frontier(ctx, points, evals, trained, recipe_betas=recipe_betas(ctx),
                            seconds=time.perf_counter() - started)
    say(f"frontier: done in {time.perf_counter() - started:.0f} s; {ctx.out / 'frontier' / 'frontier.md'}")
    return result


# ----------------------------------------------------------------------------- 1. the run


def check_arguments(dpo_betas, ppo_betas, threads: int | None) -> None:
    if not dpo_betas and not ppo_betas:
        raise UserError("give at least one β (--dpo-betas or --ppo-betas)")
    if not all(math.isfinite(b) and b > 0 for b in dpo_betas):
        raise UserError(f"--dpo-betas: DPO's β must be > 0, got {' '.join(f'{b:g}' for b in dpo_betas)}")
    if not all(math.isfinite(b) and b >= 0 for b in ppo_betas):
        raise UserError(f"--ppo-betas: PPO's KL coefficient must be >= 0, got {' '.join(f'{b:g}' for b in ppo_betas)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")


def open_run(run: str | Path) -> Context:
    """The demo's :class:`Context` for the finished run folder ``run`` (settings, world, gold judge).

    Raises :class:`UserError` naming what is missing when ``run`` is not a finished demo run, or when the
    world code changed since the run was made (its eval prompts or judge may differ)."""
    from rlhfkit.config import load_config
    from rlhfkit.demo import ppo_stage
    from rlhfkit.judges import GoldJudge
    from rlhfkit.worlds import World

    out = Path(run).resolve()
    check_run(out)
    cfg = load_config(DemoConfig, out / "settings.yaml")
    cfg.out = str(out)
    ctx = Context(cfg, out)
    ctx.passive_monitor = cfg.hacking.enabled and not ppo_stage.supports_monitor_hook()
    check_world(ctx)
    ctx.world = World.build(cfg.world.seed)  # prompts and gold judge only: no model of the world cache is used
    ctx.gold = GoldJudge(ctx.world)
    return ctx


def check_run(out: Path) -> None:
    hint = f"run `rlhfkit demo --out {out}` to the end first"
    if not out.is_dir():
        raise UserError(f"{out}: no such run folder; {hint}")
    for name in ("settings.yaml", *(f"recipes/{m}.yaml" for m in METHODS), "09-eval/baseline_samples.json"):
        if not (out / name).is_file():
            raise UserError(f"{out}: not a finished demo run ({name} is missing); {hint}")
    for stage in FINISHED_STAGES:
        manifest = read_json(out / STAGE_FOLDERS[stage] / MANIFEST) or {}
        if manifest.get("status") != "complete":
            raise UserError(f"{out}: the demo's {stage} stage ({STAGE_FOLDERS[stage]}) is not finished; {hint}")


def check_world(ctx: Context) -> None:
    """The world stage's fingerprint as ``run_demo`` computes it must be the run's: the same world code."""
    from rlhfkit.worlds.build import world_fingerprint

    settings = {"build": ctx.cfg.world.settings(), "world": world_fingerprint(ctx.cfg.world.tools)}
    if fingerprint("world", settings, []) != stage_fingerprint(ctx, "world"):
        raise UserError(f"{ctx.out}: the built-in world (its code or build settings) changed since this run was "
                        f"made, so its eval prompts or gold judge may differ; re-run `rlhfkit demo --out {ctx.out}` "
                        "first (it re-makes what changed)")


def stage_fingerprint(ctx: Context, stage: str) -> str:
    return read_json(ctx.folder(stage) / MANIFEST)["fingerprint"]


def saved_baseline(ctx: Context, prompts: list[str]):
    """The demo's SFT baseline samples (stage 9), checked to be for these eval prompts."""
    from rlhfkit.evaluate.sampling import PolicySamples

    saved = read_json(ctx.file("eval", "baseline_samples.json")) or {}
    if saved.get("prompts") != prompts:
        raise UserError(f"{ctx.file('eval', 'baseline_samples.json')}: made for other eval prompts than the "
                        f"run's settings give; re-run `rlhfkit demo --out {ctx.out}`")
    return PolicySamples.from_texts(prompts, saved["texts"])


# ----------------------------------------------------------------------------- the sweep's recipes


def split_overrides(overrides: list[str] | tuple) -> dict[str, list[str]]:
    """``--set dpo.a.b=v`` → ``{"dpo": ["a.b=v"], "ppo": []}``."""
    out: dict[str, list[str]] = {m: [] for m in METHODS}
    for item in overrides:
        method, dot, rest = item.partition(".")
        if method not in out or not dot or "=" not in rest:
            raise UserError(f"--set {item}: expected dpo.KEY=VALUE or ppo.KEY=VALUE (a key of the run's recipe)")
        out[method].append(rest)
    return out


def method_recipe(ctx: Context, method: str, overrides: list[str]) -> dict[str, Any]:
    """The run's resolved ``method`` recipe with ``overrides`` (validated), its paths pointing into this run
    folder (so a run opened by another path, or from another directory, reads its own files)."""
    from rlhfkit.config import load_config, to_dict
    from rlhfkit.demo.pipeline import recipe_fixed, stage_classes

    config = load_config(stage_classes()[method], ctx.out / "recipes" / f"{method}.yaml", overrides)
    return merge(to_dict(config), recipe_fixed(ctx, method))


def recipe_betas(ctx: Context) -> dict[str, float]:
    """The demo recipes' β: DPO's ``beta`` and PPO's ``kl.init_coef``."""
    return {"dpo": method_recipe(ctx, "dpo", [])["beta"], "ppo": method_recipe(ctx, "ppo", [])["kl"]["init_coef"]}


def with_beta(recipe: dict[str, Any], method: str, beta: float, output_dir: Path) -> dict[str, Any]:
    keys = {"beta": beta} if method == "dpo" else {"kl": {"controller": "fixed", "init_coef": beta}}
    return merge(recipe, {**keys, "train": {"output_dir": str(output_dir)}})


def plan_points(ctx: Context, betas: dict[str, Any], overrides: list[str] | tuple = ()) -> list[Point]:
    """The sweep's policies, DPO's then PPO's, each β once (in the given order); a β whose recipe is exactly
    the demo's is the demo's own run. Every trained point's recipe is written to ``frontier/recipes/``."""
    import yaml

    from rlhfkit.config import load_config
    from rlhfkit.demo.pipeline import stage_classes

    per_method = split_overrides(overrides)
    points = []
    for method in METHODS:
        swept, demo = method_recipe(ctx, method, per_method[method]), method_recipe(ctx, method, [])
        demo_dir = ctx.folder(method)
        for beta in dict.fromkeys(float(b) for b in betas[method]):
            if with_beta(swept, method, beta, demo_dir) == demo and same_monitor(ctx, method):
                points.append(Point(method, beta, f"{method}-demo", demo_dir, True, None, stage_fingerprint(ctx, method)))
                continue
            name = f"{method}-beta{beta:g}"
            folder = ctx.out / "frontier" / name
            recipe = with_beta(swept, method, beta, folder)
            path = ctx.out / "frontier" / "recipes" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# rlhfkit frontier: {name}'s recipe (re-run alone: rlhfkit {method} --config {path})\n"
                            + yaml.safe_dump(recipe, sort_keys=False))
            load_config(stage_classes()[method], path)  # validated before any training (e.g. DPO needs β > 0)
            fp = fingerprint(name, recipe, dataclasses.asdict(ctx.cfg.hacking) if method == "ppo" else None,
                             stage_fingerprint(ctx, UPSTREAM[method]))
            points.append(Point(method, beta, name, folder, False, path, fp))
    return points


def same_monitor(ctx: Context, method: str) -> bool:
    """PPO's reward-hacking monitor would run now as it ran in the demo (hook, passive or off)."""
    if method != "ppo":
        return True
    mode = ("passive" if ctx.passive_monitor else "hook") if ctx.cfg.hacking.enabled else "off"
    return read_json(ctx.folder("ppo") / MANIFEST)["summary"].get("monitor_mode") == mode


# ----------------------------------------------------------------------------- 2–3. training


def train_point(ctx: Context, point: Point) -> dict[str, Any]:
    """Train ``point`` unless its folder holds the finished run of the same fingerprint; return the run's
    summary (the demo stage's summary for a reused point). An unfinished run resumes from its last
    checkpoint; a run made from another recipe or upstream is removed and started over."""
    if point.reused:
        say(f"{point.name}: the demo's own {point.method.upper()} (β={point.beta:g}) in {point.policy_dir}, reused")
        return read_json(point.policy_dir / MANIFEST)["summary"]
    from rlhfkit.config import load_config
    from rlhfkit.demo import pipeline, ppo_stage
    from rlhfkit.demo.pipeline import stage_classes

    folder, manifest = point.policy_dir, read_json(point.policy_dir / MANIFEST) or {}
    if manifest.get("fingerprint") == point.fingerprint and manifest.get("status") == "complete":
        say(f"{point.name}: finished before, reusing {folder}")
        return manifest["summary"]
    if manifest and manifest.get("fingerprint") != point.fingerprint:
        say(f"{point.name}: its recipe or an upstream stage changed since {folder} was made; starting over")
        shutil.rmtree(folder)
    say(f"{point.name}: {'resuming' if manifest else 'training'} {point.method.upper()} with β={point.beta:g} "
        f"in {folder}")
    record = {"format": 1, "stage": point.name, "fingerprint": point.fingerprint}
    write_json_atomically(folder / MANIFEST, {**record, "status": "running"})
    config = load_config(stage_classes()[point.method], point.recipe)
    stage = pipeline.dpo_stage if point.method == "dpo" else ppo_stage.ppo_stage
    started = time.perf_counter()
    summary = stage(ctx, folder, config)
    seconds = time.perf_counter() - started
    write_json_atomically(folder / MANIFEST, {**record, "status": "complete", "seconds": seconds, "summary": summary})
    say(f"{point.name}: done in {seconds:.1f} s")
    return summary


# ----------------------------------------------------------------------------- 4. evaluation


def measure_policy(ctx: Context, policy_dir: Path, prompts: list[str], baseline) -> tuple[dict[str, Any], list]:
    """``(metrics, texts)`` of the causal LM in ``policy_dir`` against the SFT ``baseline`` samples, exactly
    as the demo's stage 9 measures a policy (:func:`rlhfkit.demo.evaluation.against_sft`)."""
    from rlhfkit.demo.evaluation import against_sft, sample_for_eval
    from rlhfkit.models.load import load_causal_lm

    model = load_causal_lm(policy_dir).eval()
    samples = sample_for_eval(ctx, model, prompts)
    return against_sft(ctx, model, samples, baseline, prompts), samples.texts


def evaluate_points(ctx: Context, points: list[Point], prompts: list[str], baseline) -> dict[str, dict]:
    """``{name: eval record}``; each saved as ``frontier/<name>/eval.json`` and reused while the policy
    and the demo's evaluation are unchanged. A reused point's figures are the demo's stage 9's own."""
    from tqdm import tqdm

    from rlhfkit.evaluate.report import json_ready
    from rlhfkit.judges.base import score_nested
    from rlhfkit.judges.reward_model import RewardModelJudge

    proxy_judge = sft_proxy = None
    upstream = [stage_fingerprint(ctx, "eval"), stage_fingerprint(ctx, "reward")]
    out = {}
    for point in tqdm(points, desc="evaluating against SFT", unit="policy", dynamic_ncols=True):
        path = ctx.out / "frontier" / point.name / "eval.json"
        fp = fingerprint("eval", point.fingerprint, upstream)
        saved = read_json(path)
        if saved and saved.get("fingerprint") == fp:
            out[point.name] = saved
            continue
        if point.reused:
            demo = read_json(ctx.file("eval", f"{point.method}.json"))
            metrics, texts = dict(demo["metrics"]), demo["texts"]
        else:
            metrics, texts = measure_policy(ctx, point.policy_dir / "final", prompts, baseline)
        if proxy_judge is None:  # the reward model as PPO's monitor reads it (normalised: SFT samples ≈ 0)
            proxy_judge = RewardModelJudge.from_folder(ctx.final("reward"))
            sft_proxy = mean(score_nested(proxy_judge, prompts, baseline.texts))
        metrics["proxy/score"] = mean(score_nested(proxy_judge, prompts, texts))
        metrics["proxy/score_sft"] = sft_proxy
        out[point.name] = {"format": 1, "name": point.name, "method": point.method, "beta": point.beta,
                           "reused": point.reused, "policy_dir": str(point.policy_dir / "final"), "fingerprint": fp,
                           "metrics": json_ready(metrics), "texts": texts}
        write_json_atomically(path, out[point.name])
        kl = metrics.get("kl/nats_per_seq")
        say(f"eval: {point.name}: Δ utility {metrics['gold/utility_delta']:+.3f}, KL "
            f"{'—' if kl is None else f'{kl:.2f}'} nats, proxy score {metrics['proxy/score']:+.3f}")
    return out


def mean(nested: list[list[float]]) -> float:
    flat = [x for row in nested for x in row]
    return sum(flat) / len(flat) if flat else math.nan
