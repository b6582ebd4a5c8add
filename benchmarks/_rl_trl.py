"""Worker of ``bench_ppo_vs_rloo.py``: TRL's ``RLOOTrainer`` iterations, run under ``.venv-trl/bin/python``.

    .venv-trl/bin/python benchmarks/_rl_trl.py --root DIR --iterations 4 --settings fastest

One iteration = one generation batch: ``prompts × generations`` completions sampled with ``model.generate``
(TRL's transformers path), the old and reference log-probs and the reward model's scores of the batch, then
``epochs`` (TRL: ``num_iterations``) passes of optimizer steps over minibatches of ``minibatch`` completions
(TRL: ``per_device_train_batch_size``; ``steps_per_generation`` = batch ÷ minibatch). Timed with wrappers
around ``_generate`` (sampling) and ``_generate_and_score_completions`` (the whole rollout) and a callback at
the end of each optimizer step; an iteration runs from the start of its rollout to the end of its last
optimizer step. Prints one JSON line: the per-iteration records (the first is the warm-up).

``--settings``: ``fp32`` (no gradient checkpointing, no bf16), ``bf16`` (no gradient checkpointing, bf16
autocast — on a CPU with bf16 matrix instructions this is the fastest), ``defaults`` (TRL's own: gradient
checkpointing and bf16 on). Everything else is the same in all.
"""

from __future__ import annotations

import json
import tempfile

import torch
from _rl_common import clock, iteration_record, worker_parser


def wrap_timed(trainer, name: str, log: list[tuple]) -> None:
    """Replace ``trainer.<name>`` by a wrapper appending the ``(start, end)`` clocks of every call to ``log``."""
    original = getattr(trainer, name)

    def timed(*args, **kwargs):
        start = clock()
        out = original(*args, **kwargs)
        log.append((start, clock()))
        return out

    setattr(trainer, name, timed)


def main() -> None:
    parser = worker_parser("completions per optimizer step", "passes over each rollout (TRL: num_iterations)")
    parser.add_argument("--settings", choices=["fp32", "bf16", "defaults"], default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algo", choices=["rloo", "grpo"], default="rloo",
                        help="rloo: RLOOTrainer with the reward model; grpo: GRPOTrainer with the reward function "
                             "of _rl_reward.py (ε_high 0.28, loss_type dapo = token mean, β·k3 in the loss)")
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="another GRPOConfig/RLOOConfig field, e.g. cache_implementation='\"static\"'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    rows = [json.loads(line) for line in (args.root / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    dataset = Dataset.from_list(rows[: args.iterations * args.prompts])
    batch = args.prompts * args.generations
    speed = {"fp32": {"gradient_checkpointing": False, "bf16": False},
             "bf16": {"gradient_checkpointing": False, "bf16": True}, "defaults": {}}[args.settings]
    out_dir = tempfile.mkdtemp(prefix="rloo-bench-")
    extra = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.option)}
    if args.algo == "grpo":
        extra = {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "scale_rewards": "group", **extra}
    Config, Trainer = (GRPOConfig, GRPOTrainer) if args.algo == "grpo" else (RLOOConfig, RLOOTrainer)
    config = Config(
        output_dir=out_dir, use_cpu=True, seed=args.seed, report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=10**6, per_device_train_batch_size=args.minibatch, generation_batch_size=batch,
        num_generations=args.generations, num_iterations=args.epochs, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, learning_rate=1e-6, shuffle_dataset=False,
        max_steps=args.iterations * (batch // args.minibatch) * args.epochs, **speed, **extra)
    tokenizer = AutoTokenizer.from_pretrained(args.root / "policy")
    if args.algo == "grpo":
        from _rl_reward import even_words

        rewards = {"reward_funcs": even_words}
    else:
        rewards = {"reward_funcs": AutoModelForSequenceClassification.from_pretrained(args.root / "reward"),
                   "reward_processing_classes": AutoTokenizer.from_pretrained(args.root / "reward")}

    step_ends: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(clock())

    trainer = Trainer(model=str(args.root / "policy"), args=config, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[StepClock()], **rewards)
    generation_calls: list[tuple] = []
    rollout_calls: list[tuple] = []
    wrap_timed(trainer, "_generate", generation_calls)
    wrap_timed(trainer, "_generate_and_score_completions", rollout_calls)
    trainer.train()

    steps_per_iteration = (batch // args.minibatch) * args.epochs
    records = []
    for k, (rollout, generation) in enumerate(zip(rollout_calls, generation_calls)):
        end = step_ends[(k + 1) * steps_per_iteration - 1]
        records.append(iteration_record(generation, rollout, (rollout[0], end)))
    print(json.dumps({"side": "trl", "algo": args.algo, "settings": args.settings, "options": extra, "threads": torch.get_num_threads(),
                      "iterations": records}))


if __name__ == "__main__":
    main()
