"""Trainable parameters and peak memory of full versus LoRA SFT of the same model.

    .venv/bin/python benchmarks/bench_lora_memory.py                         # "30m" Llama, 4 steps each
    .venv/bin/python benchmarks/bench_lora_memory.py --size 4m --lora-ranks 8 64 --no-gradient-checkpointing

Each variant runs ``rlhfkit.trainers.sft.train_sft`` — the real SFT stage — in a **fresh subprocess**, so
its peak resident set size (``ru_maxrss``) holds only that variant: Python, torch, the model, gradients,
AdamW moments and activations. Three numbers per variant:

* ``loaded``: peak RSS once the model is built (LoRA applied), before the first step;
* ``training``: peak RSS over the training steps only (read just before each step's checkpoint/logging);
* ``with saves``: peak RSS of the whole process, including the checkpoint and the final (merged) save —
  saving a model copies its weights once more, so this is what a machine must really hold.

Every variant runs with and without gradient checkpointing (``+gc``). What LoRA saves is the gradients
and AdamW moments of the frozen weights: 3 × 4 bytes per parameter, ~400 MB for the 30m model. What it
does not save is activations, the same for both (~430 MB kept for the backward at 8 × 128 tokens, about
50 KB per token per layer, measured with ``saved_tensors_hooks``) — and they peak at a different moment
(end of the forward) than the optimizer state (the step), so at a realistic batch the peak RSS of full
and LoRA training differ by much less than 400 MB. Gradient checkpointing cuts the activations and makes
the difference visible; a small batch (``--batch 1 --seq 64``) shows the parameter-bound regime.

The model is a tiny Llama from configs (``rlhfkit.models.tiny``, random weights) with a byte-level BPE
tokenizer trained on generated text; the data are generated prompt/response rows of ~``--seq`` tokens.
Timings are per optimizer step (median over the steps after the first). The machine's other processes
make timings drift; memory is stable to a few MB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "da", "fe", "go", "hu", "ji", "ko"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def word_tokenizer(rng: random.Random, vocab: int):
    """A byte-level BPE tokenizer ("llama" style) trained on 20000 texts of ``words`` (advances ``rng``)."""
    from rlhfkit.models.tiny import train_tokenizer

    return train_tokenizer([words(rng, 30) for _ in range(20000)], vocab_size=vocab, style="llama")


def run_child(command: list[str], name: str, env: dict[str, str] | None = None) -> dict:
    """Run one variant's fresh process; its last stdout line is its JSON record (exits on failure)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(folder: Path, size: str, vocab: int, seq: int, rows: int) -> tuple[Path, Path]:
    """A saved tiny Llama + tokenizer, and an SFT file whose rows are about ``seq`` tokens."""
    from rlhfkit.models.tiny import build_tiny_model, save_tiny

    rng = random.Random(0)
    tokenizer = word_tokenizer(rng, vocab)
    model_dir = save_tiny(build_tiny_model("llama", size, tokenizer, max_positions=max(512, seq)), tokenizer,
                          folder / "model")
    data = folder / "sft.jsonl"
    with data.open("w") as handle:
        for _ in range(rows):  # ~1.5 tokens per word with this tokenizer: half prompt, half response
            handle.write(json.dumps({"prompt": words(rng, seq // 4), "response": words(rng, seq // 4)}) + "\n")
    return model_dir, data


def child(args: argparse.Namespace) -> None:
    """One variant in this fresh process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from rlhfkit.config import load_config
    from rlhfkit.engine import loop as loop_module
    from rlhfkit.models.lora import trainable_parameter_count
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    record: dict = {"variant": args.variant}
    original_setup, original_finish = loop_module.TrainLoop._setup, loop_module.TrainLoop.finish_step

    def setup(self, n):  # the model is built and wrapped: count parameters, note the memory so far
        record["trainable"], record["total"] = trainable_parameter_count(self.model)
        record["loaded_mb"] = rss_mb()
        original_setup(self, n)

    def finish_step(self, metrics=None):  # before this step's log line and checkpoint
        record["training_mb"] = rss_mb()
        original_finish(self, metrics)

    loop_module.TrainLoop._setup, loop_module.TrainLoop.finish_step = setup, finish_step
    overrides = [f"model.path={args.model}", f"data.train_file={args.data}", f"train.output_dir={args.out}",
                 f"data.max_length={args.seq}", f"data.max_prompt_length={args.seq // 2}",
                 f"train.per_device_batch_size={args.batch}", f"train.max_steps={args.steps}",
                 "train.save_every=0", "train.progress_bar=false", "train.lr=1e-4"]
    kind, _, extra = args.variant.partition("+")
    if kind != "full":
        overrides += ["lora.enabled=true", f"lora.r={kind.split('-r')[-1]}", "lora.save_merged=true"]
    if extra == "gc":
        overrides.append("train.gradient_checkpointing=true")
    train_sft(load_config(SFTConfig, None, overrides))
    steps = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    seconds = [row["perf/step_seconds"] for row in steps if "perf/step_seconds" in row][1:]
    record["seconds_per_step"] = statistics.median(seconds) if seconds else float("nan")
    record["with_saves_mb"] = rss_mb()
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="30m", help="rlhfkit.models.tiny size (default 30m: d=512, 8 layers)")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=128, help="tokens per example (data.max_length)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=[16])
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="skip the +gc variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data = prepare(Path(tmp), args.size, args.vocab, args.seq, rows=args.batch * args.steps)
        results = []
        variants = ["full"] + [f"lora-r{r}" for r in args.lora_ranks]
        if not args.no_gradient_checkpointing:
            variants += [f"{v}+gc" for v in variants]
        for variant in variants:
            command = [sys.executable, __file__, "--variant", variant, "--model", str(model_dir),
                       "--data", str(data), "--out", str(Path(tmp) / variant), "--seq", str(args.seq),
                       "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
            results.append(run_child(command, variant))
    report(results, args)


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"SFT of a tiny Llama '{args.size}' (vocab {args.vocab}), batch {args.batch} × {args.seq} tokens, "
          f"{args.steps} steps, {args.threads} threads; each variant in a fresh process\n")
    header = (f"{'variant':<12} {'trainable':>12} {'total':>12} {'share':>7} {'loaded MB':>10} "
              f"{'training MB':>12} {'with saves MB':>14} {'s/step':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['variant']:<12} {r['trainable']:>12,} {r['total']:>12,} {r['trainable'] / r['total']:>7.2%} "
              f"{r['loaded_mb']:>10.0f} {r['training_mb']:>12.0f} {r['with_saves_mb']:>14.0f} "
              f"{r['seconds_per_step']:>7.3f}")
    print()
    for r in results:
        if r["variant"].startswith("full"):
            full = r
            continue
        print(f"{full['variant']} / {r['variant']}: trainable parameters ×{full['trainable'] / r['trainable']:.0f}, "
              f"training peak ×{full['training_mb'] / r['training_mb']:.2f} "
              f"(+{full['training_mb'] - full['loaded_mb']:.0f} MB vs +{r['training_mb'] - r['loaded_mb']:.0f} MB "
              f"over the loaded model), step time ×{full['seconds_per_step'] / r['seconds_per_step']:.2f}")


if __name__ == "__main__":
    main()
