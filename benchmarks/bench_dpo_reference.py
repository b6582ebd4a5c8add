"""DPO step time: precomputed reference log-probs against a reference forward on the fly; padding waste.

    .venv/bin/python benchmarks/bench_dpo_reference.py                    # 4m, 1 thread
    .venv/bin/python benchmarks/bench_dpo_reference.py --sizes 4m 30m --repeats 7 --threads 2

Model: Llama-style from configs with random weights (``rlhfkit.models.tiny``: "4m" = hidden 256, 4 layers,
vocabulary 2048; "30m" = hidden 512, 8 layers). Data: random token ids, prompt lengths uniform in 48 ± 32,
chosen and rejected response lengths each uniform in 80 ± 32 (EOS last), ``--pairs`` pairs.

A step is exactly the trainer's: ``rlhfkit.trainers.dpo.DPOStep`` on a collated micro-batch of B pairs
(2B rows, chosen then rejected; summed response log-probs; sigmoid DPO), backward, AdamW step.

1. reference: the same batches (random order) with ``PrecomputedReference`` (values looked up from a table
   the collator attaches) and ``FrozenReference`` (a frozen copy of the policy, one no-grad forward per
   step). Each repeat times ``--steps`` steps of one mode then the other (the first mode alternates), and
   the report quotes medians of the per-step times and the ratio on-the-fly / precompute, plus the one-off
   cost of precomputing the table (per pair, and as steps' worth of savings).
2. padding: precomputed reference, batches formed in random order against length-grouped batches
   (``length_grouped_batches``: sorted within mega-batches of 50 batches, then shuffled — what
   ``group_by_length=true`` does per step). Tokens/s counts real (non-padding) tokens of prompt + response.

This machine's cores are shared with other processes, so speeds drift; runs alternate A/B and report medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from rlhfkit.data.collate import length_grouped_batches
from rlhfkit.data.encode import EncodedPreference
from rlhfkit.models.tiny import tiny_config
from rlhfkit.trainers.dpo import DPOStep, Pair, PreferenceCollator, PreferenceObjective
from rlhfkit.trainers.reference_cache import FrozenReference, PrecomputedReference, compute_reference_logps

VOCAB, PAD, BOS, EOS = 2048, 0, 1, 2


def build(size: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", size, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def random_pairs(n: int, seed: int) -> list[EncodedPreference]:
    g = torch.Generator().manual_seed(seed)

    def ids(mean: int, jitter: int) -> list[int]:
        length = int(torch.randint(mean - jitter, mean + jitter + 1, (1,), generator=g))
        return torch.randint(3, VOCAB, (length,), generator=g).tolist()

    return [EncodedPreference([BOS] + ids(48, 32), ids(80, 32)[:-1] + [EOS], ids(80, 32)[:-1] + [EOS], i)
            for i in range(n)]


def collated(pairs: list[EncodedPreference], index_batches: list[list[int]], table=None) -> list[dict]:
    collate = PreferenceCollator(PAD, table)
    return [collate([Pair(i, pairs[i]) for i in batch]) for batch in index_batches]


class Trainer:
    """A policy, its AdamW and a DPO step; ``run(batches)`` times each step (seconds)."""

    def __init__(self, model, reference) -> None:
        self.model = model.train()
        self.step = DPOStep(PreferenceObjective("dpo", 0.1), reference)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def run(self, batches: list[dict]) -> list[float]:
        times = []
        for batch in batches:
            start = time.perf_counter()
            loss, _ = self.step(self.model, batch)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def alternate(trainers: dict[str, Trainer], batches: dict[str, list[dict]], repeats: int, steps: int):
    """{name: [per-step seconds]} and the per-repeat ratios of medians, modes alternating who goes first."""
    names, times = list(trainers), {name: [] for name in trainers}
    ratios = []
    for name in names:  # warm-up: allocator, kernels, optimizer state
        trainers[name].run(batches[name][:2])
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        medians = {}
        for name in order:
            window = [batches[name][(r * steps + k) % len(batches[name])] for k in range(steps)]
            step_times = trainers[name].run(window)
            times[name].extend(step_times)
            medians[name] = statistics.median(step_times)
        ratios.append(medians[names[1]] / medians[names[0]])
    return times, ratios


def bench_reference(size: str, args) -> None:
    pairs = random_pairs(args.pairs, seed=1)
    policy = build(size)
    start = time.perf_counter()
    table = compute_reference_logps(policy, pairs, pad_token_id=PAD, batch_size=args.batch_size * 2)
    precompute_seconds = time.perf_counter() - start
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(2)).tolist()
    index_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    trainers = {"precompute": Trainer(copy.deepcopy(policy), PrecomputedReference(table)),
                "on_the_fly": Trainer(copy.deepcopy(policy), FrozenReference(copy.deepcopy(policy)))}
    batches = {"precompute": collated(pairs, index_batches, table), "on_the_fly": collated(pairs, index_batches)}
    times, ratios = alternate(trainers, batches, args.repeats, args.steps)
    tokens = statistics.mean(real_tokens(b) for b in batches["precompute"])
    pre, fly = statistics.median(times["precompute"]), statistics.median(times["on_the_fly"])
    print(f"\n[{size}] reference: B={args.batch_size} pairs ({2 * args.batch_size} rows), "
          f"{tokens:.0f} real tokens per step, {args.repeats}×{args.steps} steps per mode")
    print(f"  precompute   {pre * 1e3:8.1f} ms/step  {tokens / pre:8.0f} tokens/s")
    print(f"  on_the_fly   {fly * 1e3:8.1f} ms/step  {tokens / fly:8.0f} tokens/s")
    print(f"  ratio on_the_fly/precompute: {fly / pre:.3f} (of medians); per-repeat ratios median "
          f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}–{max(ratios):.3f}")
    per_pair = precompute_seconds / len(pairs)
    saved = fly - pre
    print(f"  one-off precompute: {precompute_seconds:.1f} s for {len(pairs)} pairs ({per_pair * 1e3:.1f} ms/pair), "
          f"repaid after {precompute_seconds / saved:.0f} steps" if saved > 0 else "  (no saving measured)")


def bench_padding(size: str, args) -> None:
    pairs = random_pairs(args.pairs, seed=1)
    policy = build(size)
    table = compute_reference_logps(policy, pairs, pad_token_id=PAD, batch_size=args.batch_size * 2)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(2)).tolist()
    random_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    grouped = length_grouped_batches([len(p) for p in pairs], args.batch_size, seed=2)
    batches = {"random": collated(pairs, random_batches, table), "grouped": collated(pairs, grouped, table)}
    trainers = {name: Trainer(copy.deepcopy(policy), PrecomputedReference(table)) for name in batches}
    times, ratios = alternate(trainers, batches, args.repeats, args.steps)
    print(f"\n[{size}] padding: the same {len(pairs)} pairs, random order vs length-grouped, precomputed reference")
    rates = {}
    for name, bs in batches.items():
        real = sum(real_tokens(b) for b in bs)
        cells = sum(b["attention_mask"].numel() for b in bs)
        seconds = statistics.median(times[name])
        rates[name] = real / len(bs) / seconds
        print(f"  {name:8s} padding {1 - real / cells:5.1%}  {seconds * 1e3:8.1f} ms/step  "
              f"{rates[name]:8.0f} real tokens/s")
    print(f"  speed-up grouped/random: {rates['grouped'] / rates['random']:.3f} (tokens/s of medians); "
          f"per-repeat step-time ratios median {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4m"], choices=["4m", "30m"])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (2× rows)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="steps per mode per repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["reference", "padding"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for size in args.sizes:
        if args.only in (None, "reference"):
            bench_reference(size, args)
        if args.only in (None, "padding"):
            bench_padding(size, args)


if __name__ == "__main__":
    main()
