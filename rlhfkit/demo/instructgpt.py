"""InstructGPT in miniature (``rlhfkit demo --preset instructgpt``): is a small RLHF policy preferred to an
SFT-only model many times its size?

The paper's headline (Ouyang et al. 2022): outputs of the 1.3B InstructGPT model were preferred to those
of the 175B GPT-3, and to its 175B SFT model's more often than not. Here, with the demo's policies
(trained on the world's default ~1.1M-parameter base model) and a larger base model pretrained on the
*same* base corpus (same seed, tokenizer, epochs and batch), fine-tuned with the *same* SFT recipe:

10. build (or reuse) the larger base model (``larger.size``, cached like the world's own)
11. SFT of the larger base model on the spec's demonstrations (the demo's own SFT recipe)
12. every small policy — SFT, best-of-N, DPO, PPO — against the larger SFT model by the gold judge on the
    world's eval prompts, plus the larger SFT model against the small SFT (what size alone buys)

The small policies' samples are the ones stage 9 judged (stream ``policy``); the larger SFT model's
samples are drawn from stream ``baseline``, like the small SFT baseline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhfkit.demo.config import stage_recipe
from rlhfkit.demo.pipeline import Context
from rlhfkit.demo.runner import read_json, say, write_json_atomically

SMALL_POLICIES = ("sft", "best_of_n", "dpo", "ppo")


def larger_sft_config(ctx: Context):
    """The larger model's SFT recipe: the demo's SFT recipe with the larger base model and its own folder;
    saved to ``<out>/recipes/larger_sft.yaml`` and validated before any work."""
    import yaml

    from rlhfkit.config import load_config
    from rlhfkit.trainers.sft import SFTConfig

    world = ctx.cfg.larger.world(ctx.cfg.world)
    fixed = {"model": {"path": str(world.folder() / "base")},
             "data": {"train_file": str(world.folder() / "data" / "sft.jsonl")},
             "train": {"output_dir": str(ctx.folder("larger_sft")), "seed": ctx.cfg.seed}}
    recipe = stage_recipe(ctx.cfg, "sft", fixed)
    path = ctx.out / "recipes" / "larger_sft.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# rlhfkit demo: the larger SFT model's resolved recipe (the SFT recipe on the larger base; "
                    f"re-run alone: rlhfkit sft --config {path})\n" + yaml.safe_dump(recipe, sort_keys=False))
    return load_config(SFTConfig, path)


def larger_world_stage(ctx: Context, folder: Path) -> dict[str, Any]:
    from rlhfkit.demo.pipeline import build_world_summary

    return build_world_summary(ctx.cfg.larger.world(ctx.cfg.world))


def instructgpt_stage(ctx: Context, folder: Path, small_parameters: int, larger_parameters: int) -> dict[str, Any]:
    """Each small policy's stage-9 samples against the larger SFT model's, and the larger SFT model against
    the small SFT baseline; one ``<policy>.json`` each, written once every comparison is done."""
    from rlhfkit.demo.evaluation import against_sft
    from rlhfkit.evaluate.sampling import PolicySamples, sample_policy, stream_seed
    from rlhfkit.models.load import load_tokenizer

    cfg = ctx.cfg
    saved = read_json(ctx.file("eval", "baseline_samples.json"))
    prompts = saved["prompts"]
    larger, tokenizer = ctx.model("larger_sft"), load_tokenizer(ctx.final("larger_sft"))
    say(f"instructgpt: sampling the larger SFT model ({larger_parameters:,} parameters, "
        f"{larger_parameters / small_parameters:.1f}x the policies') on {len(prompts)} eval prompts")

    def larger_samples(stream: str):
        return sample_policy(larger, tokenizer, prompts, cfg.eval.samples, seed=stream_seed(cfg.seed, stream),
                             max_new_tokens=cfg.data.max_new_tokens, batch_size=cfg.data.batch_size)

    # No KL in these figures (model None): the sides are different models, and best-of-N has no model.
    larger_as_baseline = larger_samples("baseline")
    versus: dict[str, dict] = {}
    for name in SMALL_POLICIES:
        texts = read_json(ctx.file("eval", f"{name}.json"))["texts"]
        versus[name] = against_sft(ctx, None, PolicySamples.from_texts(prompts, texts), larger_as_baseline, prompts)
    # What size alone buys: the larger SFT model against the small SFT baseline (the eval stage's reference).
    versus["larger_sft_vs_sft"] = against_sft(ctx, None, larger_samples("policy"),
                                              PolicySamples.from_texts(prompts, saved["texts"]), prompts)
    for name, metrics in versus.items():
        write_json_atomically(folder / f"{name}.json", {"metrics": metrics})
    write_json_atomically(folder / "larger_samples.json", {"prompts": prompts, "texts": larger_as_baseline.texts})
    for name in SMALL_POLICIES:
        m = versus[name]
        say(f"instructgpt: small {name} vs larger SFT: Δ utility {m['gold/utility_delta']:+.3f} "
            f"[{m['gold/utility_delta_ci_low']:+.3f}, {m['gold/utility_delta_ci_high']:+.3f}], goal-only decisive "
            f"win rate {m.get('win_rate/goal_decisive', float('nan')):.3f}")
    return {"small_parameters": small_parameters, "larger_parameters": larger_parameters,
            "size_ratio": larger_parameters / small_parameters,
            "utility_delta": {name: m["gold/utility_delta"] for name, m in versus.items()}}


def report_section(ctx: Context, results: dict) -> dict[str, Any] | None:
    """``report.json["instructgpt"]``: the sizes and every comparison's figures (None when not run)."""
    if "instructgpt" not in results:
        return None
    folder, summary = results["instructgpt"].folder, results["instructgpt"].summary
    names = (*SMALL_POLICIES, "larger_sft_vs_sft")
    return {"baseline": "larger_sft", "small_parameters": summary["small_parameters"],
            "larger_parameters": summary["larger_parameters"], "size_ratio": summary["size_ratio"],
            "larger_world": results["larger_world"].summary, "larger_sft": results["larger_sft"].summary,
            "policies": {n: read_json(folder / f"{n}.json")["metrics"] for n in names}}
