"""Peak memory of PPO with a full-copy reference against LoRA PPO whose reference is the adapters-off policy.

    .venv/bin/python benchmarks/bench_ppo_lora_memory.py                  # "4m" and "30m", 3 repeats, ~7 min
    .venv/bin/python benchmarks/bench_ppo_lora_memory.py --sizes 30m --repeats 5 --modes full lora

Each run is the real stage, ``rlhfkit.trainers.ppo.train`` on the shipped recipe (``configs/ppo.yaml`` for
``full``, ``configs/ppo_lora.yaml`` for ``lora``; sizes, steps and batch overridden), in a **fresh
subprocess** with one torch thread, so its peak resident set size (``ru_maxrss``) holds only that run.
Three modes:

* ``full``: policy and value model trained in full; the reference is a frozen copy of the policy;
* ``lora``: LoRA r=16 (the recipe's) on the policy and on the value model; the reference is the policy with its
  adapters disabled — no second copy;
* ``lora+copy``: LoRA as above but ``reference.path`` = the policy's folder, a frozen copy again: the
  difference to ``lora`` is what the disabled-adapters reference alone saves.

All four models have the same size (the value model starts from the reward model, as the recipe does). Per run:

* ``imported``: RSS after importing torch, transformers, peft and rlhfkit, before any model is loaded;
* ``training``: peak RSS over the PPO steps (read before each step's log line and checkpoint) — the number
  that decides whether a run fits; ``with the final save``: the peak of the whole process;
* the bytes of each model's parameters (storage shared with a model listed before counts once: the
  adapters-off reference costs 0), the AdamW state measured after the steps, and the gradients (one fp32
  value per trainable parameter, alive from the backward to the optimizer step);
* after the last step: anonymous memory, and the resident pages of the memory-mapped weight files.

transformers maps ``*.safetensors`` copy-on-write: a model's weights become resident when first read (so the
RSS *before training* is barely above ``imported``), a weight that is written (trained) turns into anonymous
memory, and a frozen one stays a clean page of the file — counted in RSS, but reclaimable, and shared
between two models loaded from the same folder (the PSS column counts it once). So with LoRA the value
model's frozen base and the reward model, both loaded from ``reward/``, share their pages, and the
``lora+copy`` reference shares the policy's: its RSS cost is real, its physical cost is not.

What dominates (N = one model's fp32 bytes): full PPO holds 4 models + gradients and two AdamW moments of
the policy and the value model ≈ 10 N; LoRA PPO holds the policy's base, the value model's base and the
reward model ≈ 3 N of RSS (2 N physically, the value base sharing the reward model's pages) plus the small
adapters and their state. Above that come Python/torch (the ``imported`` line) and the rollout's and the
minibatch's activations, about the same in both modes (malloc keeps much of them after the step). Each mode's numbers are medians over ``--repeats`` runs whose order alternates.

The models are tiny Llamas from configs (``rlhfkit.models.tiny``, random weights), with a byte-level BPE
tokenizer trained in-process on generated words (``bench_lora_memory.word_tokenizer``); the prompts are
generated words of about ``--prompt-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from bench_lora_memory import rss_mb, run_child, word_tokenizer, words

ROOT = Path(__file__).resolve().parent.parent
MODES = ("full", "lora", "lora+copy")
MODELS = ("policy", "value", "reward", "reference")  # storage shared with an earlier one counts once
COLUMNS = ("policy", "reference", "reward", "value")
MB = 2**20


def current_rss_mb() -> float:
    """The resident set size now (``rss_mb`` is the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def resident_breakdown_mb() -> dict[str, float]:
    """Now: all anonymous memory, and the clean file pages of memory-mapped ``*.safetensors`` files — transformers
    maps them copy-on-write, so a weight never written stays a page of the file (a written one turns anonymous)
    — as RSS, and as PSS, which counts a page that two models loaded from one folder share once."""
    totals = {"anon_mb": 0.0, "mapped_weights_rss_mb": 0.0, "mapped_weights_pss_mb": 0.0}
    in_weights = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not line[0].isupper():  # a mapping's header line: "start-end perms offset dev inode [path]"
            in_weights = fields[-1].endswith(".safetensors")
        elif fields[0] == "Anonymous:":
            kb = int(fields[1]) / 1024
            totals["anon_mb"] += kb
            if in_weights:  # Rss and Pss of a private mapping include its copied-on-write pages
                totals["mapped_weights_rss_mb"] -= kb
                totals["mapped_weights_pss_mb"] -= kb
        elif in_weights and fields[0] in ("Rss:", "Pss:"):
            totals[f"mapped_weights_{fields[0][:-1].lower()}_mb"] += int(fields[1]) / 1024
    return totals


def prepare(folder: Path, size: str, vocab: int, prompt_tokens: int, n_prompts: int) -> dict[str, Path]:
    """Saved ``policy/`` (a tiny Llama + tokenizer), ``reward/`` (a scalar-head model of the same size, another
    random trunk) and ``prompts.jsonl`` (``{"prompt"}`` rows of about ``prompt_tokens`` tokens)."""
    from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model
    from rlhfkit.models.tiny import build_tiny_model, save_tiny

    rng = random.Random(0)
    tokenizer = word_tokenizer(rng, vocab)
    policy = save_tiny(build_tiny_model("llama", size, tokenizer, seed=0), tokenizer, folder / "policy")
    reward_model, reward_tok = reward_model_from_causal_lm(build_tiny_model("llama", size, tokenizer, seed=1),
                                                           tokenizer, seed=1)
    reward = save_scalar_model(reward_model, reward_tok, folder / "reward")
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as handle:  # ~1.5 tokens per word with this tokenizer
        for _ in range(n_prompts):
            handle.write(json.dumps({"prompt": words(rng, max(1, prompt_tokens * 2 // 3))}) + "\n")
    return {"policy": policy, "reward": Path(reward), "prompts": prompts}


def overrides_for(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The recipe of ``args.mode`` and the keys that make it this benchmark's short run."""
    recipe = ROOT / "configs" / ("ppo.yaml" if args.mode == "full" else "ppo_lora.yaml")
    overrides = [f"model.path={args.policy}", f"reward_model.path={args.reward}",
                 f"data.train_file={args.prompts}", f"train.output_dir={args.out}",
                 f"train.per_device_batch_size={args.batch}", f"train.max_steps={args.steps}",
                 f"ppo.minibatch_size={args.minibatch}", f"ppo.epochs={args.epochs}",
                 f"rollout.max_new_tokens={args.new_tokens}", f"data.max_prompt_length={args.prompt_tokens}",
                 f"data.max_length={args.prompt_tokens + args.new_tokens}", "rollout.print_samples=0",
                 "train.save_every=0", "train.progress_bar=false", "train.log_every=1000"]
    if args.mode != "full":
        overrides.append(f"lora.r={args.lora_r}")
    if args.mode == "lora+copy":
        overrides.append(f"reference.path={args.policy}")
    return recipe, overrides


def parameter_record(models) -> dict[str, dict[str, int]]:
    """Per model of a :class:`~rlhfkit.trainers.ppo_models.PPOModels`: parameters, trainable ones, and the bytes
    of parameter storage not already held by a model before it in :data:`MODELS`."""
    held = {"policy": models.actor_critic.policy, "value": models.actor_critic.value_model,
            "reward": getattr(models.scorer, "model", None), "reference": models.reference}
    seen: set[int] = set()
    record = {}
    for name in MODELS:
        params = list(held[name].parameters()) if held[name] is not None else []
        fresh = 0
        for p in params:
            storage = p.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                fresh += storage.nbytes()
        record[name] = {"params": sum(p.numel() for p in params),
                        "trainable": sum(p.numel() for p in params if p.requires_grad),
                        "bytes": fresh, "gradient_bytes": sum(p.numel() * p.element_size()
                                                              for p in params if p.requires_grad)}
    return record


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: step, exp_avg, exp_avg_sq per parameter)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if hasattr(t, "numel"))


def child(args: argparse.Namespace) -> None:
    """One run in this fresh process; prints one JSON line."""
    import torch

    torch.set_num_threads(1)
    import peft  # noqa: F401  (imported here so ``imported`` holds every library a LoRA run loads)

    import rlhfkit.trainers.ppo as ppo_module
    from rlhfkit.config import load_config
    from rlhfkit.engine import loop as loop_module
    from rlhfkit.trainers import critic_free
    from rlhfkit.trainers.ppo_config import PPOConfig

    record: dict = {"mode": args.mode, "imported_mb": current_rss_mb()}
    build, finish = critic_free.build_online_models, loop_module.TrainLoop.finish_step

    def build_and_measure(cfg, scorer=None, environment=None):
        models = build(cfg, scorer, environment=environment)
        record["loaded_mb"], record["models"] = current_rss_mb(), parameter_record(models)
        return models

    def finish_step(self, metrics=None):  # before this step's log line and checkpoint
        record["training_mb"] = rss_mb()
        record["optimizer_bytes"] = optimizer_state_bytes(self.optimizer)
        record.update(resident_breakdown_mb())  # the last step's: the weights and AdamW state are all resident
        finish(self, metrics)

    # ppo.train builds its models through critic_free.build_online_models (PPO's included)
    critic_free.build_online_models, loop_module.TrainLoop.finish_step = build_and_measure, finish_step
    recipe, overrides = overrides_for(args)
    ppo_module.train(load_config(PPOConfig, str(recipe), overrides))
    rows = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines() if line]
    seconds = [row["perf/step_seconds"] for row in rows if "perf/step_seconds" in row]
    record["seconds_per_step"] = statistics.median(seconds[1:] or seconds)
    record["with_saves_mb"] = rss_mb()
    print(json.dumps(record))


def run_size(args: argparse.Namespace, size: str, tmp: Path) -> dict[str, list[dict]]:
    """Every mode ``args.repeats`` times on one model size, the order of modes reversed on odd repeats."""
    folders = prepare(tmp / size, size, args.vocab, args.prompt_tokens, n_prompts=args.batch * args.steps)
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for repeat in range(args.repeats):
        for mode in args.modes if repeat % 2 == 0 else args.modes[::-1]:
            out = tmp / size / f"{mode}-{repeat}"
            command = [sys.executable, __file__, "--child-mode", mode, "--policy", str(folders["policy"]),
                       "--reward", str(folders["reward"]), "--prompts", str(folders["prompts"]),
                       "--out", str(out), *shared_flags(args)]
            runs[mode].append(run_child(command, f"{size} {mode} (repeat {repeat})", env=env))
            print(f"  {size} {mode} repeat {repeat}: training peak {runs[mode][-1]['training_mb']:.0f} MB",
                  file=sys.stderr)
    return runs


def shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--batch", str(args.batch), "--steps", str(args.steps), "--minibatch", str(args.minibatch),
            "--epochs", str(args.epochs), "--prompt-tokens", str(args.prompt_tokens),
            "--new-tokens", str(args.new_tokens), "--lora-r", str(args.lora_r)]


MEASURED = ("imported_mb", "loaded_mb", "training_mb", "with_saves_mb", "seconds_per_step", "optimizer_bytes",
            "anon_mb", "mapped_weights_rss_mb", "mapped_weights_pss_mb")


def median_record(runs: list[dict]) -> dict:
    """The median of each measured number over the repeats (parameter counts are the same in every run)."""
    return {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in MEASURED},
            "training_spread_mb": max(r["training_mb"] for r in runs) - min(r["training_mb"] for r in runs)}


def accounted(r: dict) -> dict[str, float]:
    """The parameter, gradient and AdamW bytes one run holds (MB), and its trainable-parameter count and share
    of the two trained models' parameters."""
    models = r["models"]
    trainable = sum(m["trainable"] for m in models.values())
    held = {name: models[name]["bytes"] / MB for name in COLUMNS}
    grads = sum(m["gradient_bytes"] for m in models.values()) / MB
    return {**held, "grads": grads, "adamw": r["optimizer_bytes"] / MB, "trainable": trainable,
            "share": trainable / (models["policy"]["params"] + models["value"]["params"]),
            "sum": sum(held.values()) + grads + r["optimizer_bytes"] / MB}


def report(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> None:
    print(f"\nPPO, {args.steps} steps of {args.batch} prompts × ≤{args.prompt_tokens} + {args.new_tokens} new "
          f"tokens, minibatch {args.minibatch}, {args.epochs} epoch(s), LoRA r={args.lora_r}, 1 torch thread; "
          f"policy, reference, reward and value model of the same size; medians of {args.repeats} runs, each in "
          "a fresh process, order alternating. MB = 2^20 bytes.\n")
    print("| model | mode | trainable params (share) | policy | reference | reward | value | grads | AdamW | sum "
          "| imported RSS | training peak RSS | peak − imported | s/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, by_mode in results.items():
        for mode, r in by_mode.items():
            a = accounted(r)
            print(f"| {size} | {mode} | {a['trainable']:,} ({a['share']:.1%}) | "
                  + " | ".join(f"{a[k]:.0f}" for k in (*COLUMNS, "grads", "adamw", "sum"))
                  + f" | {r['imported_mb']:.0f} | **{r['training_mb']:.0f}** | "
                  f"{r['training_mb'] - r['imported_mb']:.0f} | {r['seconds_per_step']:.1f} |")
    print("\nResident after the last step (activations and gradients freed), MB: anonymous memory, and the "
          "memory-mapped safetensors pages of weights never written (RSS; PSS counts a page two models share "
          "once).\n")
    print("| model | mode | anonymous | mapped weights RSS | mapped weights PSS | RSS before training | "
          "peak RSS with the final save |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, by_mode in results.items():
        for mode, r in by_mode.items():
            print(f"| {size} | {mode} | {r['anon_mb']:.0f} | {r['mapped_weights_rss_mb']:.0f} | "
                  f"{r['mapped_weights_pss_mb']:.0f} | {r['loaded_mb']:.0f} | {r['with_saves_mb']:.0f} |")
    print()
    for size, by_mode in results.items():
        for line in comparisons(by_mode):
            print(f"- {size}: {line}")


def comparisons(by_mode: dict[str, dict]) -> list[str]:
    """The full / LoRA ratio of peak RSS, and what the adapters-off reference saves against a frozen copy."""
    lines = []
    if "full" in by_mode and "lora" in by_mode:
        full, lora = by_mode["full"], by_mode["lora"]
        above = (full["training_mb"] - full["imported_mb"]) / (lora["training_mb"] - lora["imported_mb"])
        lines.append(f"peak RSS full / LoRA ×{full['training_mb'] / lora['training_mb']:.2f}, "
                     f"{full['training_mb'] - lora['training_mb']:.0f} MB less with LoRA (×{above:.2f} above the "
                     f"imported libraries; accounted bytes {accounted(full)['sum'] - accounted(lora)['sum']:.0f} MB "
                     f"less); spread over repeats ≤ {max(full['training_spread_mb'], lora['training_spread_mb']):.0f} MB")
    if "lora" in by_mode and "lora+copy" in by_mode:
        lora, copy = by_mode["lora"], by_mode["lora+copy"]
        lines.append(f"a frozen reference copy instead of disabled adapters adds "
                     f"{copy['training_mb'] - lora['training_mb']:.0f} MB of peak RSS (its parameters: "
                     f"{copy['models']['reference']['bytes'] / MB:.0f} MB; mapped-weights PSS "
                     f"{copy['mapped_weights_pss_mb'] - lora['mapped_weights_pss_mb']:+.0f} MB)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4m", "30m"], help="rlhfkit.models.tiny sizes")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="prompts per PPO step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=16)
    for hidden in ("--child-mode", "--policy", "--reward", "--prompts", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mode:
        args.mode = args.child_mode
        return child(args)
    import torch

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            runs = run_size(args, size, Path(tmp))
            results[size] = {mode: median_record(runs[mode]) for mode in args.modes}
    report(results, args)
    print(f"\ncommand: .venv/bin/python benchmarks/bench_ppo_lora_memory.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
