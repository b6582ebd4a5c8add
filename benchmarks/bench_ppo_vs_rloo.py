"""An online RL iteration: rlhfkit PPO (which also trains a value model) against TRL's RLOO, same generation work.

    bash benchmarks/setup_trl.sh                                   # once: TRL in .venv-trl (never a dependency)
    .venv/bin/python benchmarks/bench_ppo_vs_rloo.py               # 4m, 3 alternating repeats, 1 thread
    .venv/bin/python benchmarks/bench_ppo_vs_rloo.py --sizes 4m 30m --repeats 5 --trl-defaults

Models (``_rl_common.py``): Llama-style from ``rlhfkit.models.tiny`` configs with random weights — "4m" = hidden
256, 4 layers, vocabulary 2048; "30m" = hidden 512, 8 layers — a policy (also the frozen reference) and a
reward model of the same size (``LlamaForSequenceClassification``; rlhfkit's separate value model starts from
it). Prompts: random words, lengths uniform in ``prompt_len ± jitter`` tokens. A word-level tokenizer whose EOS
lies past the models' vocabulary, so no model can emit it: every completion on both sides is exactly
``max_new_tokens`` long, and the generation work is identical.

One iteration, both sides: ``prompts × generations`` completions (each prompt sampled ``generations`` times, the
same prompts on both sides in the same order), sampled at temperature 1 with the KV cache; the rollout's
log-probs, the reference's log-probs and the reward model's scores; then ``epochs`` passes of optimizer
steps (AdamW, gradient clipping at 1) over minibatches of ``minibatch`` completions. TRL: ``RLOOTrainer`` with
``num_generations``, ``generation_batch_size`` = the batch, ``per_device_train_batch_size`` = the minibatch,
``num_iterations`` = epochs, β = 0.05 (a reference model), the reward model as its reward function. rlhfkit:
``rlhfkit.trainers.ppo.train`` from its config with the same batch, minibatch and epochs, β = 0.05, plus the
value model PPO needs and RLOO does not — a separate one initialised from the reward model (InstructGPT, the
default) or a value head on the policy (``value_model.kind=head``, lm-human-preferences).

Arms, each in both precisions the CPU offers (this machine has bf16 matrix instructions: a bf16 matrix product
runs ~5× faster than a float32 one, so bf16 autocast is the fastest setting for both libraries):
- TRL with gradient checkpointing off and bf16 off (``trl_fp32``) or on (``trl_bf16``); everything else at its
  defaults, which are already its fastest here (no vLLM; transformers' ``generate``; its fused, chunked
  log-prob head). ``--trl-defaults`` adds one run at TRL's own defaults (gradient checkpointing and bf16 on),
  for information.
- rlhfkit with its default config (``ours_default``: float32, ``value_model.kind=separate``,
  ``rollout.old_logprobs=forward`` — one policy forward after sampling), and its faster settings:
  ``rollout.old_logprobs=sampling`` (log-probs from the sampling pass) with the separate value model
  (``ours_separate``) or a value head, whose values then also come from the sampling pass (``ours_head``), in
  float32, and with ``train.mixed_precision=bf16`` (``…_bf16``: sampling and every forward under the updates'
  bf16 autocast, attention and the KV cache in float32; ``old_logprobs=forward``, as sampling log-probs are
  refused outside float32). On a CPU without bf16 arithmetic (AVX2 only) the bf16 arms are emulated and very
  slow: run them with ``--arms`` only where bf16 is native.
Each arm runs in its own subprocess (TRL under ``.venv-trl/bin/python``, rlhfkit under ``.venv/bin/python``),
one warm-up iteration then ``--iterations`` timed ones; arms alternate within each repeat (the order reversed
every other repeat), since this machine's speed drifts by ±15–20 %.

Reported per arm: median seconds per iteration — generation (sampling only), experience (the rest of the
rollout: forwards of policy/reference/reward/value models, scoring), update (the optimizer steps and the
step's bookkeeping) and the whole iteration — and the iteration's speed-up over TRL in the same precision: of
the medians, the median of per-repeat ratios (each pair ran back to back), and of CPU seconds (one thread:
the time the process actually ran, leaving out waits for a core on a busy machine); and over TRL's fastest arm.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES = ("generate", "experience", "update", "total")

# arm name → (python, worker, extra worker arguments, precision, description)
ARMS = {
    "trl_fp32": (".venv-trl/bin/python", "_rl_trl.py", ["--settings", "fp32"], "fp32",
                 "TRL RLOO, fp32 (no grad. ckpt, no bf16)"),
    "trl_bf16": (".venv-trl/bin/python", "_rl_trl.py", ["--settings", "bf16"], "bf16",
                 "TRL RLOO, bf16 (no grad. ckpt)"),
    "trl_defaults": (".venv-trl/bin/python", "_rl_trl.py", ["--settings", "defaults"], "bf16",
                     "TRL RLOO, its defaults (grad. ckpt, bf16)"),
    "ours_default": (".venv/bin/python", "_rl_ours.py", ["--value", "separate", "--old-logprobs", "forward"], "fp32",
                     "rlhfkit PPO, default config (fp32, separate value model)"),
    "ours_separate": (".venv/bin/python", "_rl_ours.py", ["--value", "separate", "--old-logprobs", "sampling"],
                      "fp32", "rlhfkit PPO, fp32, separate value model, old_logprobs=sampling"),
    "ours_head": (".venv/bin/python", "_rl_ours.py", ["--value", "head", "--old-logprobs", "sampling"], "fp32",
                  "rlhfkit PPO, fp32, value head, old_logprobs=sampling"),
    # bf16: old_logprobs=forward, since the sampling pass's log-probs are refused outside float32
    "ours_separate_bf16": (".venv/bin/python", "_rl_ours.py", ["--value", "separate", "--old-logprobs", "forward",
                                                               "--precision", "bf16"], "bf16",
                           "rlhfkit PPO, bf16, separate value model"),
    "ours_head_bf16": (".venv/bin/python", "_rl_ours.py", ["--value", "head", "--old-logprobs", "forward",
                                                           "--precision", "bf16"], "bf16",
                       "rlhfkit PPO, bf16, value head"),
}
TRL_BY_PRECISION = {"fp32": "trl_fp32", "bf16": "trl_bf16"}


def run_arm(arm: str, root: Path, args, iterations: int, arms: dict = ARMS) -> dict:
    python, worker, extra, _, _ = arms[arm]
    command = [str(ROOT / python), str(HERE / worker), "--root", str(root), "--iterations", str(iterations + 1),
               "--prompts", str(args.prompts), "--generations", str(args.generations),
               "--max-new-tokens", str(args.max_new_tokens), "--minibatch", str(args.minibatch),
               "--epochs", str(args.epochs), "--threads", str(args.threads), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{arm} failed ({shlex.join(command)}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    timed = result["iterations"][1:]  # the first iteration warms up (allocator, lazy inits)
    return {key: statistics.median(it[key] for it in timed) for key in timed[0]}


def bench_size(size: str, arms: list[str], args, table: dict = ARMS) -> dict[str, list[dict]]:
    from _rl_common import build_folders

    root = build_folders(Path(args.workdir) / size, size, n_prompts=(args.iterations + 1) * args.prompts,
                         prompt_len=args.prompt_len, jitter=args.jitter)
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        order = arms if repeat % 2 == 0 else arms[::-1]
        for arm in order:
            runs[arm].append(run_arm(arm, root, args, args.iterations, table))
            r = runs[arm][-1]
            print(f"  [{size} repeat {repeat + 1}/{args.repeats}] {arm:14s} " + "  ".join(
                f"{p} {r[p]:6.2f}s" for p in PHASES) + f"  (cpu {r['cpu_total']:6.2f}s)", flush=True)
    if args.trl_defaults:  # slow: once, for information
        runs["trl_defaults"] = [run_arm("trl_defaults", root, args, max(1, args.iterations // 2), table)]
    return runs


def table(results: dict[str, dict[str, list[dict]]], arms: dict = ARMS) -> str:
    """Markdown: per arm the median seconds of each phase, and the iteration's speed-up over TRL in the same
    precision (of the medians; the median of per-repeat pairs; of CPU seconds) and over TRL's fastest arm."""
    head = ("| size | arm | generate (s) | experience (s) | update (s) | iteration (s) | vs TRL same precision: "
            "medians | pairs | CPU time | vs TRL fastest |")
    lines = [head, "|" + "---|" * 10]
    for size, runs in results.items():
        medians = {arm: {p: statistics.median(r[p] for r in arm_runs) for p in (*PHASES, "cpu_total")}
                   for arm, arm_runs in runs.items()}
        trl_arms = [arm for arm in runs if arm.startswith("trl_")]
        fastest = min(trl_arms, key=lambda arm: medians[arm]["total"])
        for arm, arm_runs in runs.items():
            med = medians[arm]
            base_arm = TRL_BY_PRECISION.get(arms[arm][3]) if not arm.startswith("trl_") else None
            if base_arm in runs:
                base = runs[base_arm]
                pairs = [b["total"] / r["total"] for b, r in zip(base, arm_runs)]
                same = [f"{medians[base_arm]['total'] / med['total']:.2f}", f"{statistics.median(pairs):.2f}",
                        f"{medians[base_arm]['cpu_total'] / med['cpu_total']:.2f}"]
            else:
                same = ["–", "–", "–"]
            versus = f"{medians[fastest]['total'] / med['total']:.2f}"
            lines.append(f"| {size} | {arms[arm][4]} | " + " | ".join(f"{med[p]:.2f}" for p in PHASES)
                         + " | " + " | ".join([*same, versus]) + " |")
        lines.append(f"\nTRL's fastest arm at {size}: {arms[fastest][4]}.\n")
    return "\n".join(lines)


def cpu_table(results: dict[str, dict[str, list[dict]]], arms: dict = ARMS) -> str:
    """Markdown: per arm the median CPU seconds of each phase (one thread: the time the process ran, which a
    busy machine does not inflate) and the median of the per-repeat ratios TRL CPU s ÷ arm CPU s, in the
    same precision (each pair ran back to back)."""
    lines = ["| size | arm | generate CPU s | experience CPU s | update CPU s | iteration CPU s | "
             "vs TRL same precision: median of per-repeat CPU ratios (min–max) |", "|" + "---|" * 7]
    for size, runs in results.items():
        for arm, arm_runs in runs.items():
            med = {p: statistics.median(r[f"cpu_{p}"] for r in arm_runs) for p in PHASES}
            base_arm = TRL_BY_PRECISION.get(arms[arm][3]) if not arm.startswith("trl_") else None
            ratio = "–"
            if base_arm in runs:
                pairs = [b["cpu_total"] / r["cpu_total"] for b, r in zip(runs[base_arm], arm_runs)]
                ratio = f"**{statistics.median(pairs):.2f}×** ({min(pairs):.2f}–{max(pairs):.2f})"
            lines.append(f"| {size} | {arms[arm][4]} | " + " | ".join(f"{med[p]:.2f}" for p in PHASES)
                         + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4m"], choices=["4m", "30m"])
    parser.add_argument("--arms", nargs="+", default=[a for a in ARMS if a != "trl_defaults"],
                        choices=[a for a in ARMS if a != "trl_defaults"])
    parser.add_argument("--trl-defaults", action="store_true", help="also run TRL at its defaults, once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per run (after one warm-up)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="every completion's length")
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--jitter", type=int, default=16)
    parser.add_argument("--minibatch", type=int, default=16, help="completions per optimizer step")
    parser.add_argument("--epochs", type=int, default=1, help="passes over each rollout (TRL: num_iterations)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the models are written (default: a temp dir)")
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-rl-")
    command = ".venv/bin/python benchmarks/bench_ppo_vs_rloo.py " + shlex.join(sys.argv[1:])
    batch = args.prompts * args.generations
    print(f"{command}\n{args.prompts} prompts × {args.generations} completions = {batch} per iteration, "
          f"{args.max_new_tokens} new tokens each (no early EOS), prompts {args.prompt_len}±{args.jitter} tokens, "
          f"minibatches of {args.minibatch}, {args.epochs} epoch(s) → {batch // args.minibatch * args.epochs} "
          f"optimizer steps per iteration; {args.threads} thread(s); {args.repeats} alternating repeats × "
          f"{args.iterations} timed iterations; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = {size: bench_size(size, args.arms, args) for size in args.sizes}
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n\n```\n{command}\n```\n\n{table(results)}\n\n"
          f"{cpu_table(results)}\n\nraw: {json.dumps(results)}")


if __name__ == "__main__":
    main()
