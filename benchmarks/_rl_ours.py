"""Worker of ``bench_ppo_vs_rloo.py``: rlhfkit PPO iterations (``rlhfkit.trainers.ppo.train``), under ``.venv``.

    .venv/bin/python benchmarks/_rl_ours.py --root DIR --iterations 4

The real trainer, from its config, on the folders ``_rl_common.build_folders`` wrote: the policy (also the
frozen reference), the reward model (frozen scorer, and the start of the separate value model — or, with
``--value head``, a value head on the policy's trunk). One iteration = one PPO step: ``prompts × generations``
rollouts (each prompt repeated ``generations`` times in the prompt file, data order unshuffled, so step k gets
the prompts TRL's iteration k gets), generated, scored, forwarded once (log-probs, reference log-probs,
values; ``--old-logprobs sampling`` takes the log-probs — and a value head's values — from the sampling pass),
then ``epochs`` passes of minibatches of ``minibatch`` rollouts. Timed by wrapping ``generate``
(sampling), ``PPOTrainer.collect`` (the whole rollout) and ``PPOTrainer.step`` (the iteration). Prints one
JSON line: the per-iteration records (the first is the warm-up).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch
from _rl_common import clock, iteration_record, worker_parser


def timed(log: list[tuple], fn):
    """``fn`` wrapped to append the ``(start, end)`` clocks of each call to ``log``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = clock()
        out = fn(*args, **kwargs)
        log.append((start, clock()))
        return out

    return wrapper


def main() -> None:
    parser = worker_parser("rollouts per optimizer step", "PPO epochs over each rollout")
    parser.add_argument("--value", choices=["separate", "head"], default="separate")
    parser.add_argument("--old-logprobs", choices=["forward", "sampling"], default="forward")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="train.mixed_precision")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print the top operators of the last iteration")
    parser.add_argument("--estimator", choices=["gae", "grpo"], default="gae",
                        help="gae: PPO with a value model and the reward model; grpo: critic-free, rollout.n = "
                             "--generations, the reward function of _rl_reward.py, β·k3 in the loss")
    parser.add_argument("--beta", type=float, default=0.05, help="kl.init_coef")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rlhfkit.config import load_config
    from rlhfkit.trainers import ppo, ppo_rollout
    from rlhfkit.trainers.ppo_config import PPOConfig

    work = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    rows = (args.root / "prompts.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    rows = rows[: args.iterations * args.prompts]
    grpo = args.estimator == "grpo"  # the trainer repeats each prompt rollout.n times itself
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(row for row in rows for _ in range(1 if grpo else args.generations))
    batch = args.prompts * (1 if grpo else args.generations)  # prompt rows per step
    if grpo:  # the same function TRL calls; no reward model, no value model
        reward = Path(__file__).resolve().parent / "_rl_reward.py"
        models = [f"model.path={args.root / 'policy'}", f'rewards=[{{function: "{reward}:even_words"}}]',
                  "advantage.estimator=grpo", f"rollout.n={args.generations}", "kl.penalty=loss",
                  "advantage.loss_aggregation=token_mean", "advantage.clip_range_low=0.2",
                  "advantage.clip_range_high=0.28"]
    else:
        models = [f"model.path={args.root / 'policy'}", f"reward_model.path={args.root / 'reward'}",
                  f"value_model.kind={args.value}"]
    overrides = [
        *models, f"data.train_file={work / 'prompts.jsonl'}", "data.template=raw",
        "data.max_prompt_length=256", f"data.max_length={256 + args.max_new_tokens}",
        f"train.output_dir={work / 'out'}", f"train.seed={args.seed}", f"train.per_device_batch_size={batch}",
        f"train.max_steps={args.iterations}", "train.shuffle=false", "train.lr=1e-6", "train.save_every=0",
        "train.log_every=1000000", "train.progress_bar=false",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0", "rollout.print_samples=0",
        f"rollout.old_logprobs={args.old_logprobs}",
        f"ppo.minibatch_size={args.minibatch}", f"ppo.epochs={args.epochs}", f"kl.init_coef={args.beta}",
    ]
    if args.precision == "bf16":  # ("train.mixed_precision=no" would read as the YAML boolean false)
        overrides.append("train.mixed_precision=bf16")
    cfg = load_config(PPOConfig, None, overrides)
    generate_s, collect_s, step_s = [], [], []
    ppo_rollout.generate = timed(generate_s, ppo_rollout.generate)  # collect_chunk's sampler
    ppo.PPOTrainer.collect = timed(collect_s, ppo.PPOTrainer.collect)
    step = ppo.PPOTrainer.step
    if args.profile:
        step = profiled_last(step, args.iterations)
    ppo.PPOTrainer.step = timed(step_s, step)
    ppo.train(cfg)
    records = [iteration_record(g, c, s) for g, c, s in zip(generate_s, collect_s, step_s)]
    print(json.dumps({"side": "ours", "estimator": args.estimator, "value": args.value, "old_logprobs": args.old_logprobs,
                      "precision": args.precision,
                      "threads": torch.get_num_threads(),
                      "iterations": records}))


def profiled_last(step, iterations: int):
    """``step`` run under the torch profiler at its last call; the table goes to stderr."""
    import sys

    from torch.profiler import ProfilerActivity, profile

    def wrapper(self, batch, number):
        if number < iterations:
            return step(self, batch, number)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = step(self, batch, number)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
        return out

    return wrapper


if __name__ == "__main__":
    main()
