"""The demo's training-side stages: world → SFT → SFT samples → labels → reward model → DPO.

Each ``*_stage(ctx, folder) -> summary`` does one stage's work in its folder and returns a JSON-able
summary (the runner records it in ``stage.json``). PPO lives in :mod:`rlhfkit.demo.ppo_stage`, best-of-N,
evaluation and the report in :mod:`rlhfkit.demo.evaluation`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import load_config, save_config
from rlhfkit.demo.config import DemoConfig, stage_recipe
from rlhfkit.demo.runner import read_json, say, write_json_atomically

FAMILY_ORDER = ("helpful", "harmful", "benign", "unanswerable", "sycophancy")
STAGE_FOLDERS = {"world": "01-world", "sft": "02-sft", "samples": "03-samples", "labels": "04-labels",
                 "reward": "05-reward", "ppo": "06-ppo", "dpo": "07-dpo", "best_of_n": "08-best_of_n",
                 "eval": "09-eval", "larger_world": "10-larger_world", "larger_sft": "11-larger_sft",
                 "instructgpt": "12-instructgpt"}  # the runner's f"{number:02d}-{name}"; the last three: --preset instructgpt


@dataclass
class Context:
    """What every stage needs: the settings, the run folder, the world and its judge (set by stage 1)."""

    cfg: DemoConfig
    out: Path
    assets: Any = None  # rlhfkit.worlds.build.WorldAssets
    world: Any = None  # rlhfkit.worlds.World
    gold: Any = None  # rlhfkit.judges.GoldJudge
    cache: dict[str, Any] = field(default_factory=dict)  # models loaded once per run
    passive_monitor: bool = False  # PPO has no monitor hook: its held-out evaluation feeds the monitor

    def folder(self, stage: str) -> Path:
        return self.out / STAGE_FOLDERS[stage]

    def final(self, stage: str) -> Path:
        return self.folder(stage) / "final"

    def file(self, stage: str, name: str) -> Path:
        return self.folder(stage) / name

    def model(self, stage: str):
        """The causal LM of ``stage`` (``"base"`` or a trained stage's ``final``), loaded once, eval mode."""
        from rlhfkit.models.load import load_causal_lm

        if stage not in self.cache:
            path = self.assets.base_dir if stage == "base" else self.final(stage)
            self.cache[stage] = load_causal_lm(path).eval()
        return self.cache[stage]

    def tokenizer(self):
        from rlhfkit.models.load import load_tokenizer

        if "tokenizer" not in self.cache:
            self.cache["tokenizer"] = load_tokenizer(self.final("sft"))
        return self.cache["tokenizer"]


# ----------------------------------------------------------------------------- recipes


def recipe_fixed(ctx: Context, stage: str) -> dict[str, Any]:
    """The keys the demo sets itself in a stage's recipe: paths, output folder, seed."""
    seed = ctx.cfg.seed
    base_dir = ctx.cfg.world.folder() / "base"
    sft_file = ctx.cfg.world.folder() / "data" / "sft.jsonl"
    prefs, heldout = ctx.file("labels", "prefs_train.jsonl"), ctx.file("labels", "prefs_heldout.jsonl")
    train = {"output_dir": str(ctx.folder(stage)), "seed": seed}
    fixed = {
        "sft": {"model": {"path": str(base_dir)}, "data": {"train_file": str(sft_file)}},
        "reward": {"model": {"path": str(ctx.final("sft"))},
                   "data": {"train_file": str(prefs), "eval_file": str(heldout)},
                   "normalize": {"reference_file": str(ctx.file("samples", "sft_responses.jsonl"))}},
        "dpo": {"model": {"path": str(ctx.final("sft"))}, "reference": None,
                "data": {"train_file": str(prefs), "eval_file": str(heldout)}},
        "ppo": {"model": {"path": str(ctx.final("sft"))}, "reference": {"path": ""},
                "reward_model": {"path": str(ctx.final("reward"))},
                "data": {"train_file": str(ctx.file("samples", "rl_prompts.jsonl"))},
                "ptx": {"data_file": str(sft_file)},  # PPO-ptx's demonstrations: the SFT spec's (on with ptx.coef)
                "rollout": {"chunk_size": None}},  # one scorer call per step: the demo's recorder counts steps
    }[stage]
    fixed["train"] = train
    if stage == "ppo":  # PPO's own held-out evaluation is the passive monitor's feed, else off (the recorder
        # counts every other scorer call as a training step)
        fixed["data"]["eval_file"] = str(ctx.file("samples", "monitor_prompts.jsonl")) if ctx.passive_monitor else None
        if ctx.passive_monitor:
            train["eval_every"] = ctx.cfg.hacking.every
    return fixed


def stage_classes() -> dict[str, type]:
    from rlhfkit.trainers.dpo import DPOConfig
    from rlhfkit.trainers.ppo_config import PPOConfig
    from rlhfkit.trainers.reward import RewardConfig
    from rlhfkit.trainers.sft import SFTConfig

    return {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "dpo": DPOConfig}


def write_recipes(ctx: Context) -> dict[str, Any]:
    """Resolve, validate and save every stage's recipe in ``<out>/recipes/`` before any work; return the
    typed configs by stage. A bad key fails here, naming the recipe file and the key."""
    import yaml

    configs = {}
    for stage, cls in stage_classes().items():
        recipe = stage_recipe(ctx.cfg, stage, recipe_fixed(ctx, stage))
        path = ctx.out / "recipes" / f"{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# rlhfkit demo: the {stage} stage's resolved recipe (re-run alone: "
                        f"rlhfkit {stage} --config {path})\n" + yaml.safe_dump(recipe, sort_keys=False))
        configs[stage] = load_config(cls, path)
    return configs


# ----------------------------------------------------------------------------- 1. world


def world_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    return build_world_summary(ctx.cfg.world)


def build_world_summary(world_cfg) -> dict[str, Any]:
    """Build (or reuse) the world for ``world_cfg``; the stage summary of its base model."""
    from rlhfkit.worlds.build import build_world

    assets = build_world(world_cfg)
    m = assets.manifest
    return {"root": str(assets.root), "base_dir": str(assets.base_dir), "base_parameters": m["base_parameters"],
            "arch": world_cfg.arch, "size": world_cfg.size, "vocab_size": m["vocab_size"],
            "pretrain_steps": m["pretrain_steps"], "pretrain_tokens": m["pretrain_tokens"],
            "seconds_pretrain": m["seconds_pretrain"], "eval_nll": m["eval_nll"]}


# ----------------------------------------------------------------------------- 2. SFT


def sft_stage(ctx: Context, folder: Path, config) -> dict[str, Any]:
    from rlhfkit.trainers.sft import train_sft

    result = train_sft(config)
    return {"final_dir": str(result.final_dir), "status": result.status,
            "sft/nll": result.metrics.get("sft/nll", result.metrics.get("train/loss"))}


# ----------------------------------------------------------------------------- 3. samples


def choose_prompts(world, seed: int, n_monitor: int, n_pairs: int, n_rl: int) -> dict[str, list]:
    """Train prompts for the monitor (drawn first, without replacement, the same number per family), the
    comparison pairs and PPO (family- then kind-uniform with replacement, never a monitor prompt)."""
    from rlhfkit.worlds.prompts import KINDS

    rng = random.Random(f"demo-prompts-{seed}")
    monitor = []
    for i, family in enumerate(FAMILY_ORDER):
        pool = world.prompts("train", family)
        monitor += rng.sample(pool, n_monitor // len(FAMILY_ORDER) + (i < n_monitor % len(FAMILY_ORDER)))
    excluded = {p.text for p in monitor}
    pools = {(f, k): [p for p in world.prompts("train", f) if p.kind == k and p.text not in excluded]
             for f in FAMILY_ORDER for k in KINDS[f]}

    def draw(n: int, stream: str) -> list:
        r = random.Random(f"demo-{stream}-{seed}")
        out = []
        for _ in range(n):
            family = r.choice(FAMILY_ORDER)
            out.append(r.choice(pools[(family, r.choice(KINDS[family]))]))
        return out

    return {"monitor": monitor, "pairs": draw(n_pairs, "pairs"), "rl": draw(n_rl, "rl")}


def sample_texts(model, tokenizer, prompts: list, n_samples: int, *, seed: int, max_new_tokens: int,
                 batch_size: int, desc: str, chunk: int = 256) -> list[list[str]]:
    """``n_samples`` responses per prompt at temperature 1, in chunks of prompts with a progress bar; chunk i
    draws from its own stream ``derive_seed(seed, "chunk", i)`` (deterministic, whatever was run before)."""
    from tqdm import tqdm

    from rlhfkit.data.order import derive_seed
    from rlhfkit.evaluate.sampling import sample_responses

    texts: list[list[str]] = []
    starts = range(0, len(prompts), chunk)
    for i, start in enumerate(tqdm(starts, desc=desc, unit="chunk", dynamic_ncols=True)):
        texts += sample_responses(model, tokenizer, prompts[start : start + chunk], n_samples,
                                  seed=derive_seed(seed, "chunk", i), max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
    return texts


def samples_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    from rlhfkit.data import write_rows
    from rlhfkit.data.order import derive_seed

    cfg = ctx.cfg
    chosen = choose_prompts(ctx.world, cfg.seed, cfg.data.monitor_prompts, cfg.data.pair_prompts, cfg.data.rl_prompts)
    texts = sample_texts(ctx.model("sft"), ctx.tokenizer(), [p.text for p in chosen["pairs"]], 2,
                         seed=derive_seed(cfg.seed, "demo", "pairs"), max_new_tokens=cfg.data.max_new_tokens,
                         batch_size=cfg.data.batch_size, desc="sampling SFT pairs")
    write_rows(folder / "pairs.jsonl", [{"prompt": p.text, "family": p.family, "a": a, "b": b}
                                        for p, (a, b) in zip(chosen["pairs"], texts)])
    # The reward model is normalised on SFT samples (mean 0), so PPO starts near a score of 0.
    write_rows(folder / "sft_responses.jsonl", [{"prompt": p.text, "response": r} for p, rs in
                                                zip(chosen["pairs"], texts) for r in rs if r.strip()])
    for name in ("rl", "monitor"):
        write_rows(folder / f"{name}_prompts.jsonl", [{"prompt": p.text, "family": p.family} for p in chosen[name]])
    identical = sum(a.strip() == b.strip() for a, b in texts)
    return {"pair_prompts": len(texts), "identical_pairs": identical, "rl_prompts": len(chosen["rl"]),
            "monitor_prompts": len(chosen["monitor"]),
            "empty_responses": sum(not r.strip() for rs in texts for r in rs)}


# ----------------------------------------------------------------------------- 4. labels


def read_pairs(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def split_by_prompt(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)``: every pair of a held-out prompt text is held out (no prompt in both)."""
    texts = sorted({p["prompt"] for p in pairs})
    random.Random(f"demo-heldout-{seed}").shuffle(texts)
    heldout = set(texts[: max(1, round(fraction * len(texts)))])
    return [p for p in pairs if p["prompt"] not in heldout], [p for p in pairs if p["prompt"] in heldout]


def labels_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    """Calibrate τ on the SFT pairs (measured, docs/world.md §5), label them with one annotator, split by
    prompt into the training labels (reward model AND DPO) and the held-out ones."""
    from rlhfkit.data import write_rows
    from rlhfkit.worlds import SimulatedAnnotator, calibrate_tau, label_pairs

    cfg, a = ctx.cfg, ctx.cfg.annotators
    judge = ctx.gold.inner  # the world's gold judge (annotators read utilities)
    raw = read_pairs(ctx.file("samples", "pairs.jsonl"))
    usable = [p for p in raw if p["a"].strip() and p["b"].strip()]  # empty texts are invalid data rows
    triples = [(p["prompt"], p["a"], p["b"]) for p in usable]
    calibration = calibrate_tau(triples, judge, (a.target_low, a.target_high), seeds=(a.seed, a.seed + 1),
                                tie_margin=a.tie_margin, length_bias=a.length_bias)
    annotator = SimulatedAnnotator(calibration.tau, a.seed, a.length_bias, a.tie_margin, judge=judge)
    train, heldout = split_by_prompt(usable, cfg.data.heldout_fraction, cfg.seed)
    rows_train, counts_train = label_pairs([(p["prompt"], p["a"], p["b"]) for p in train], annotator)
    rows_heldout, counts_heldout = label_pairs([(p["prompt"], p["a"], p["b"]) for p in heldout], annotator)
    write_rows(folder / "prefs_train.jsonl", rows_train)
    write_rows(folder / "prefs_heldout.jsonl", rows_heldout)
    write_rows(folder / "heldout_pairs.jsonl", heldout)
    counts = {k: counts_train[k] + counts_heldout[k] for k in counts_train}
    summary = {"tau": calibration.tau, "disagreement": calibration.disagreement,
               "disagreement_nonidentical": calibration.disagreement_nonidentical,
               "agreement_with_gold": calibration.agreement_with_gold, "in_target": calibration.in_target,
               "calibration_pairs": calibration.n_used, "equal_utility_pairs": calibration.n_equal_utility,
               "prompts": len(raw), "empty_pairs": len(raw) - len(usable), **counts,
               "train_rows": len(rows_train), "heldout_rows": len(rows_heldout)}
    say(f"labels: τ = {calibration.tau:.3f}; two annotators disagree on {calibration.disagreement:.1%} of the "
        f"{calibration.n_used} non-identical pairs of distinct utility; annotator–gold agreement "
        f"{calibration.agreement_with_gold:.1%}; {len(rows_train)} training and {len(rows_heldout)} held-out labels")
    return summary


# ----------------------------------------------------------------------------- 5. reward model


def heldout_vs_gold(ctx: Context, judge) -> dict[str, Any]:
    """On the held-out pairs of distinct gold utility: how often the reward model, and the labelling
    annotator, prefer the gold-better response (a tie counts as not agreeing)."""
    from rlhfkit.worlds import SimulatedAnnotator, agreement_with_gold

    a = ctx.cfg.annotators
    summary = read_json(ctx.folder("labels") / "stage.json") or {}
    tau = summary.get("summary", {}).get("tau")
    pairs = [(p["prompt"], p["a"], p["b"]) for p in read_pairs(ctx.file("labels", "heldout_pairs.jsonl"))]
    rm = agreement_with_gold(pairs, judge, ctx.gold.inner, a.tie_margin)
    out = {"heldout_accuracy_vs_gold": rm["agreement"], "heldout_pairs_vs_gold": rm["n"]}
    if tau is not None:
        annotator = SimulatedAnnotator(tau, a.seed, a.length_bias, a.tie_margin, judge=ctx.gold.inner)
        out["annotator_accuracy_vs_gold"] = agreement_with_gold(pairs, annotator, ctx.gold.inner,
                                                                a.tie_margin)["agreement"]
    return out


def reward_stage(ctx: Context, folder: Path, config) -> dict[str, Any]:
    from rlhfkit.judges.reward_model import RewardModelJudge
    from rlhfkit.trainers.reward import train_reward

    result = train_reward(config)
    m = result.metrics
    summary = {"final_dir": str(result.final_dir), "status": result.status, "gain": result.gain,
               "bias": result.bias, "train_accuracy": m.get("reward/accuracy"),
               "heldout_accuracy_vs_labels": m.get("eval/reward/accuracy"),
               "heldout_label_pairs": m.get("eval/reward/pairs")}
    summary.update(heldout_vs_gold(ctx, RewardModelJudge.from_folder(result.final_dir)))
    say(f"reward model: held-out accuracy against gold {summary['heldout_accuracy_vs_gold']:.1%} "
        f"(annotators: {summary.get('annotator_accuracy_vs_gold', float('nan')):.1%}) on "
        f"{summary['heldout_pairs_vs_gold']} pairs; against the held-out labels "
        f"{summary['heldout_accuracy_vs_labels'] or float('nan'):.1%}")
    return summary


# ----------------------------------------------------------------------------- 7. DPO


def dpo_stage(ctx: Context, folder: Path, config) -> dict[str, Any]:
    from rlhfkit.trainers.dpo import train

    summary = train(config)
    m = summary.last_metrics
    return {"final_dir": str(Path(config.train.output_dir) / "final"), "status": summary.status,
            "steps": summary.step, **{k: m.get(k) for k in ("rewards/accuracies", "logps/chosen_minus_ref",
                                                             "eval/rewards/accuracies",
                                                             "eval/logps/chosen_minus_ref") if k in m}}


def save_settings(ctx: Context) -> None:
    save_config(ctx.cfg, ctx.out / "settings.yaml")
    write_json_atomically(ctx.out / "recipes" / "index.json", {s: str(ctx.out / "recipes" / f"{s}.yaml")
                                                               for s in stage_classes()})
