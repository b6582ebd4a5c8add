"""A GRPO iteration: rlhfkit (``advantage.estimator: grpo``) against TRL's ``GRPOTrainer``, same work.

    bash benchmarks/setup_trl.sh                                   # once: TRL in .venv-trl (never a dependency)
    .venv/bin/python benchmarks/bench_grpo_vs_trl.py               # 4m, fp32 arms, 3 alternating repeats, 1 thread
    .venv/bin/python benchmarks/bench_grpo_vs_trl.py --sizes 30m --repeats 2
    .venv/bin/python benchmarks/bench_grpo_vs_trl.py --arms trl_bf16 ours_bf16 --repeats 1 --iterations 1

What both sides do, matched (the models and prompts of ``_rl_common.py``, shared with ``bench_ppo_vs_rloo.py``):

- the same saved random-weight Llama policy ("4m": hidden 256, 4 layers; "30m": hidden 512, 8 layers;
  vocabulary 2048), loaded by both from the same folder; the frozen reference is the same weights again
  (β = 0.04 on both sides, so both load and run a reference; k3 estimator in the loss on both);
- the same prompts in the same order (``prompts`` per iteration, no shuffling), each answered ``generations``
  times (TRL: ``num_generations``; rlhfkit: ``rollout.n``), sampled at temperature 1, top-p 1, top-k 0, KV cache;
- exactly ``max_new_tokens`` new tokens per completion: the tokenizer's EOS lies past the models' vocabulary, so
  neither side can stop early and both generate the same number of tokens;
- the same reward *function*, ``_rl_reward.py:even_words`` (one Python file; rlhfkit loads it as
  ``rewards: [{function: …}]``, TRL gets it as ``reward_funcs``), no reward model;
- the same objective: group z-scored advantages (TRL ``scale_rewards=group``), clipped surrogate with ε_low 0.2
  and ε_high 0.28, token mean over each optimizer step's tokens (TRL ``loss_type=dapo``, rlhfkit
  ``advantage.loss_aggregation=token_mean``), AdamW at lr 1e-6, gradient clipping at 1;
- one pass over each generation batch (TRL ``num_iterations=1``; rlhfkit ``ppo.epochs=1``) in optimizer steps of
  ``minibatch`` completions (TRL ``per_device_train_batch_size``, ``steps_per_generation`` = batch ÷ minibatch,
  which makes TRL compute the old log-probs with a forward, as rlhfkit's default ``rollout.old_logprobs=forward``
  does).

Arms:
- ``trl_fp32``: TRL with gradient checkpointing off and bf16 off (its fastest fp32 settings on a CPU: no vLLM,
  transformers' ``generate``, its fused chunked log-prob head); ``trl_bf16``: the same with ``bf16=True``.
- ``ours_default``: rlhfkit's defaults for this work (fp32, ``rollout.old_logprobs=forward``);
  ``ours_sampling``: ``rollout.old_logprobs=sampling`` (the old log-probs from the sampling pass, equal to the
  forward's to float rounding in fp32 — one policy forward fewer); ``ours_bf16``: ``train.mixed_precision=bf16``
  (``old_logprobs=forward``, since sampling log-probs are refused in bf16).

Timing (the same points on both sides, in ``_rl_ours.py`` / ``_rl_trl.py``): *generation* = sampling only
(rlhfkit: its ``generate``; TRL: its ``_generate``, which also tokenises and decodes); *experience* = the rest of
the rollout (old and reference log-probs, the reward function, advantages; rlhfkit ``PPOTrainer.collect`` and
TRL ``_generate_and_score_completions``, minus generation); *update* = from the end of the rollout to the end of
the iteration's last optimizer step (TRL: a ``TrainerCallback.on_step_end``; rlhfkit: the end of
``PPOTrainer.step``, which includes its advantages and metrics). Each arm in its own subprocess, one warm-up
iteration then ``--iterations`` timed ones, arms alternating within each repeat (order reversed every other
repeat). Reported: median seconds per phase, and the iteration's speed-up over TRL in the same precision — of
the medians, the median of per-repeat ratios (pairs run back to back), and of CPU seconds (one thread: the time
the process ran, leaving out waits for a core on a busy machine).

This CPU (AMD EPYC, AVX2) has no native bf16 arithmetic: bf16 matrix products are emulated and run far slower
than fp32 here, so the bf16 arms say nothing about a GPU, where bf16 is the fast path.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile

from bench_ppo_vs_rloo import bench_size, cpu_table, table

_GRPO = ["--estimator", "grpo", "--beta", "0.04"]
ARMS = {
    "trl_fp32": (".venv-trl/bin/python", "_rl_trl.py", ["--algo", "grpo", "--beta", "0.04", "--settings", "fp32"],
                 "fp32", "TRL GRPO, fp32 (no grad. ckpt, no bf16)"),
    "trl_bf16": (".venv-trl/bin/python", "_rl_trl.py", ["--algo", "grpo", "--beta", "0.04", "--settings", "bf16"],
                 "bf16", "TRL GRPO, bf16 (no grad. ckpt)"),
    "ours_default": (".venv/bin/python", "_rl_ours.py", [*_GRPO, "--old-logprobs", "forward"], "fp32",
                     "rlhfkit GRPO, fp32, old_logprobs=forward (default)"),
    "ours_sampling": (".venv/bin/python", "_rl_ours.py", [*_GRPO, "--old-logprobs", "sampling"], "fp32",
                      "rlhfkit GRPO, fp32, old_logprobs=sampling"),
    "ours_bf16": (".venv/bin/python", "_rl_ours.py", [*_GRPO, "--old-logprobs", "forward", "--precision", "bf16"],
                  "bf16", "rlhfkit GRPO, bf16 autocast, old_logprobs=forward"),
}
FP32_ARMS = ["trl_fp32", "ours_default", "ours_sampling"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4m"], choices=["4m", "30m"])
    parser.add_argument("--arms", nargs="+", default=FP32_ARMS, choices=list(ARMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per run (after one warm-up)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (the group)")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="every completion's length")
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--jitter", type=int, default=16)
    parser.add_argument("--minibatch", type=int, default=16, help="completions per optimizer step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the models are written (default: a temp dir)")
    args = parser.parse_args()
    args.epochs = 1  # one pass over each generation batch (TRL: num_iterations=1)
    args.trl_defaults = False
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-grpo-")
    command = ".venv/bin/python benchmarks/bench_grpo_vs_trl.py " + shlex.join(sys.argv[1:])
    batch = args.prompts * args.generations
    print(f"{command}\n{args.prompts} prompts × {args.generations} completions = {batch} per iteration, "
          f"{args.max_new_tokens} new tokens each (no early EOS), prompts {args.prompt_len}±{args.jitter} tokens, "
          f"{batch // args.minibatch} optimizer steps of {args.minibatch} per iteration (one pass); "
          f"{args.threads} thread(s); {args.repeats} alternating repeats × {args.iterations} timed iterations; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {size: bench_size(size, args.arms, args, ARMS) for size in args.sizes}
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n\n```\n{command}\n```\n\n"
          f"{table(results, ARMS)}\n\n{cpu_table(results, ARMS)}\n\nraw: {json.dumps(results)}")


if __name__ == "__main__":
    main()
