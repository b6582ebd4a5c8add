"""SFT, reward-model and DPO steps: rlhfkit against TRL, tokens per second, and FLOP/s against the matmul peak.

    bash benchmarks/setup_trl.sh                                          # once: .venv-trl with TRL
    .venv/bin/python benchmarks/bench_vs_trl.py --sizes 4m --repeats 1    # a quick look
    .venv/bin/python benchmarks/bench_vs_trl.py --sizes 4m 30m --repeats 3 --threads 2   # RESULTS.md

**Same work on both sides.** Models: Llama-style, random weights, built once from configs
(``rlhfkit.models.tiny``: "4m" = hidden 256, 4 layers; "30m" = hidden 512, 8 layers; vocabulary 2048) and
saved to a temporary folder that both sides load, float32. Tokenizer: one token per word (see
``_vs_trl_common.py``), so both sides see the same token ids. Data: random words; ``variable`` rows have a
prompt of 48 ± 32 tokens and responses of 80 ± 32 tokens (EOS included, uniform), ``equal`` rows exactly
48 + 80. One epoch of exactly ``steps × batch`` rows. Batch: ``--batch-sft`` sequences, or ``--batch-pairs``
pairs (two sequences each) for reward and DPO. AdamW, lr 1e-5, linear decay, clipping at 1.0, no warm-up.

**The trainers are the real ones**, each in its own process (``_rlhfkit_worker.py`` under ``.venv``:
``train_sft`` / ``train_reward`` / DPO ``train`` through ``load_config``; ``trl_worker.py`` under
``.venv-trl``: ``SFTTrainer`` / ``RewardTrainer`` / ``DPOTrainer``). Arms of each cell:

* ``rlhfkit``: ``RLHFKIT_SETTINGS`` — ``group_by_length=true``; DPO with its default precomputed reference;
  reward and DPO with their default ``shared_prompt`` rows (a pair is one row, prompt computed once);
* ``trl``: TRL's fastest settings on this CPU — activation checkpointing off, bf16 off (its defaults turn
  both on), ``precompute_ref_log_probs=True`` for DPO — batches in random order (TRL's default sampler);
* ``trl_grouped``: the same plus ``train_sampling_strategy="group_by_length"`` (transformers'
  ``LengthGroupedSampler``). TRL's SFT supports it as it is. TRL 1.16's reward and DPO trainers fail with it
  ("can only infer lengths … 'input_ids'"), so for them the worker adds a ``length`` column and sets
  ``remove_unused_columns=False`` — a peer made stronger than its settings allow, shown in its own column;
* ``trl_defaults`` (information, one short run): TRL's config defaults (bf16 autocast, activation
  checkpointing, and for DPO a reference forward every step);
* with ``--trl-extra``: ``trl_padding_free`` (SFT ``padding_free=True``: one flattened row per batch; it needs
  FlashAttention to skip the cross-sequence work, so on CPU it is slower than padding; DPO's is disabled
  in TRL 1.16); with ``--bf16``: both sides with bf16 autocast (information; fast on CPUs with AVX512-BF16).

"TRL fastest settings" in the table is the fastest of the arms TRL supports as they are (SFT: ``trl``,
``trl_grouped`` and with ``--trl-extra`` ``trl_padding_free``; reward and DPO: ``trl``), by median tokens/s.
Both sides' length grouping sorts the whole (one-epoch) data: rlhfkit's mega-batches are 50 batches, and
the TRL worker pins transformers' multiplier to 50 too (it picks ``min(batches // 4, 50)``, 50 on any real
dataset of ≥ 200 batches, but 2 on this benchmark's 8).

**Timing.** A step's time is the gap between the ends of consecutive optimizer steps (its forward, backward
and optimizer step, the previous step's logging, the collating of its batch); the first ``--warmup`` steps
are not timed. A run is one epoch, so the timed steps are the epoch's batches but the first: with length
grouping TRL's sampler puts the longest batch first (in warm-up), rlhfkit's a random one.
Each repeat runs every arm once, in a rotated order (A/B alternation), and a run's speed is its timed tokens
over its timed seconds. The table quotes the median over repeats and the ratio rlhfkit / TRL fastest as
the median of the per-repeat ratios, with their range, and the same ratio of tokens per CPU-second of the
worker process (which leaves out the time it waited for a core: a check on a busy machine). Tokens are real tokens: prompt + response (+ EOS) of every training
sequence, padding excluded — the same count on both sides (a DPO pair is two sequences, so its prompt
counts twice even when rlhfkit computes it once).

**FLOP/s.** The float32 matmul peak is ``torch.mm`` of square matrices (2048 and 4096) at the same thread
count, the best of several timings, measured before and after the runs (the higher is used). A training
step's useful FLOPs are ``6·(N − N_head)·T_computed + 6·N_head·T_loss + 12·L·d·K``: N the parameters used as
matrices per token (the tied input embedding counts once, as the LM head; the reward model has no LM head),
N_head the LM head's, T_computed the token positions the model actually ran (without padding; a shared
prompt counted once), T_loss the tokens whose log-probability the loss takes, and K the attention's
(query, key) pairs a causal model needs (Σ over tokens of its position + 1): the PaLM appendix-B count
without padding, recomputation or causally-masked work. Achieved FLOP/s = useful FLOPs / step time.

This machine's speed drifts (±15–20 %, other processes share its cores): quote medians and ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vs_trl_common import BOS, EOS, PAD, VOCAB, Job, make_rows, row_tokens, word_tokenizer, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OURS_PYTHON, TRL_PYTHON = ROOT / ".venv/bin/python", ROOT / ".venv-trl/bin/python"
WORKERS = {"rlhfkit": ROOT / "benchmarks/_rlhfkit_worker.py", "trl": ROOT / "benchmarks/trl_worker.py"}

TRL_FAST = {"activation_checkpointing": False, "bf16": False}
# rlhfkit's settings: length-grouped steps; reward and DPO share each prompt between its responses (default)
RLHFKIT_SETTINGS = {"sft": {"group_by_length": True}, "reward": {"group_by_length": True},
                    "dpo": {"group_by_length": True}}
# TRL arms whose settings TRL supports as they are; the others need something TRL does not do by itself
NATIVE_TRL_ARMS = {"sft": ("trl", "trl_grouped", "trl_padding_free"), "reward": ("trl",), "dpo": ("trl",)}


def arms_for(stage: str, extra: bool, bf16: bool) -> dict[str, tuple[str, dict]]:
    """{arm: (side, settings)} timed in every repeat."""
    fast = dict(TRL_FAST, **({"precompute_ref_log_probs": True} if stage == "dpo" else {}))
    grouped = dict(fast, train_sampling_strategy="group_by_length")
    if stage != "sft":  # TRL 1.16 fails here without a `length` column (the worker adds one) kept in the batches
        grouped["remove_unused_columns"] = False
    arms = {"rlhfkit": ("rlhfkit", RLHFKIT_SETTINGS[stage]), "trl": ("trl", fast), "trl_grouped": ("trl", grouped)}
    if extra and stage == "sft":
        arms["trl_padding_free"] = ("trl", dict(fast, padding_free=True, max_length=None))
    if bf16:  # information: bf16 autocast on both sides (fast on CPUs with AVX512-BF16 / AMX)
        arms["rlhfkit_bf16"] = ("rlhfkit", dict(RLHFKIT_SETTINGS[stage], **{"train.mixed_precision": "bf16"}))
        trl_bf16 = grouped if stage == "sft" else fast
        arms["trl_bf16"] = ("trl", dict(trl_bf16, bf16=True))
    return arms


# ----------------------------------------------------------------------------- assets


def build_assets(root: Path, sizes: list[str], stages: list[str], variants: list[str], args) -> dict:
    """Model folders per size and data files per (stage, variant); returns their paths and parameter counts."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.tiny import tiny_config

    assets: dict = {"models": {}, "data": {}, "shapes": {}, "epoch_tokens": {}}
    for size in sizes:
        config = tiny_config("llama", size, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        folder = root / f"model-{size}"
        model.save_pretrained(folder)
        word_tokenizer().save_pretrained(folder)
        total = sum(p.numel() for p in model.parameters())
        head = model.get_output_embeddings().weight.numel()
        assets["models"][size] = str(folder)
        assets["shapes"][size] = {"params": total, "head": head, "layers": config.num_hidden_layers,
                                  "hidden": config.hidden_size}
    for stage, variant in itertools.product(stages, variants):
        batch = args.batch_sft if stage == "sft" else args.batch_pairs
        rows = make_rows(stage, variant, batch * args.steps, seed=1)
        assets["data"][stage, variant] = str(write_jsonl(root / f"{stage}-{variant}.jsonl", rows))
        assets["epoch_tokens"][stage, variant] = sum(row_tokens(stage, row) for row in rows)
    return assets


def matmul_peak(threads: int, tries: int = 5) -> float:
    """Best float32 ``torch.mm`` rate (FLOP/s) over square sizes 2048 and 4096 at ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        for n in (2048, 4096):
            a, b = torch.randn(n, n), torch.randn(n, n)
            out = torch.empty(n, n)
            torch.mm(a, b, out=out)
            for _ in range(tries):
                start = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2 * n**3 / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(previous)
    return best


# ----------------------------------------------------------------------------- running


def run_job(job: Job, log_dir: Path) -> dict | None:
    python = OURS_PYTHON if job.side == "rlhfkit" else TRL_PYTHON
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads),
               TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    shutil.rmtree(job.work_dir, ignore_errors=True)
    Path(job.work_dir).mkdir(parents=True)
    log = log_dir / f"{Path(job.result_file).stem}.log"
    load_before = os.getloadavg()[0]
    with open(log, "w") as handle:
        done = subprocess.run([str(python), str(WORKERS[job.side]), job.to_json()], stdout=handle,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    shutil.rmtree(job.work_dir, ignore_errors=True)
    if done.returncode != 0 or not Path(job.result_file).exists():
        tail = log.read_text().splitlines()[-15:]
        print(f"    FAILED {job.side}/{job.arm} (exit {done.returncode}); log {log}:\n      " + "\n      ".join(tail))
        return None
    result = json.loads(Path(job.result_file).read_text())
    result["load"] = (load_before + os.getloadavg()[0]) / 2  # 1-minute load average around the run
    Path(job.result_file).write_text(json.dumps(result, indent=1))
    return result


def speed(result: dict) -> float:
    return sum(result["step_tokens"]) / sum(result["step_seconds"])


def run_cell(stage: str, size: str, variant: str, assets: dict, root: Path, args) -> dict:
    """Every arm ``--repeats`` times in rotated order, then TRL's defaults once; {arm: [results]}."""
    arms = arms_for(stage, args.trl_extra, args.bf16)
    names = list(arms)
    results: dict[str, list] = {name: [] for name in names}

    def job(name: str, side: str, settings: dict, repeat: int, steps: int, warmup: int) -> Job:
        tag = f"{stage}-{size}-{variant}-{name}-{repeat}"
        return Job(side=side, arm=name, stage=stage, size=size, variant=variant, model_dir=assets["models"][size],
                   data_file=assets["data"][stage, variant], work_dir=str(root / "work" / tag),
                   result_file=str(root / "results" / f"{tag}.json"), threads=args.threads,
                   batch_size=args.batch_sft if stage == "sft" else args.batch_pairs, steps=steps, warmup=warmup,
                   settings=settings)

    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            side, settings = arms[name]
            result = run_job(job(name, side, settings, repeat, args.steps, args.warmup), root / "logs")
            if result is not None:
                seen, expected = sum(result["all_tokens"]), assets["epoch_tokens"][stage, variant]
                if seen != expected:  # every run is one epoch: both sides must have seen every token once
                    print(f"    WARNING {name}: {seen} tokens in the epoch, the data holds {expected}")
                results[name].append(result)
                print(f"    repeat {repeat + 1} {name:18s} {speed(result):8.0f} tokens/s  ({cpu_speed(result):.0f} per CPU-s)")
    if args.defaults:
        steps = args.defaults_warmup + args.defaults_timed
        result = run_job(job("trl_defaults", "trl", {}, 0, steps, args.defaults_warmup), root / "logs")
        if result is not None:
            results["trl_defaults"] = [result]
            print(f"    once     {'trl_defaults':18s} {speed(result):8.0f} tokens/s  ({cpu_speed(result):.0f} per CPU-s)")
    return results


# ----------------------------------------------------------------------------- summary


def useful_flops(result: dict, shape: dict, stage: str) -> float:
    """Useful FLOPs of the timed steps (module docstring)."""
    params, head = shape["params"], shape["head"]
    if stage == "reward":  # no LM head: the tied embedding is only a look-up; the score head is d × 1
        params, head = params - head + shape["hidden"], 0
    body = params - head
    computed, loss_tokens, keys = (sum(result[k]) for k in ("step_computed", "step_loss_tokens", "step_keys"))
    return 6 * body * computed + 6 * head * loss_tokens + 12 * shape["layers"] * shape["hidden"] * keys


def cpu_speed(result: dict) -> float:
    return sum(result["step_tokens"]) / sum(result["step_cpu_seconds"])


def compare(results: dict, ours: str, theirs: str) -> dict:
    """Median of the per-repeat ratios (wall clock and CPU time) of ``ours`` over ``theirs``."""
    pairs = list(zip(results[ours], results[theirs]))
    wall = [speed(a) / speed(b) for a, b in pairs]
    cpu = [cpu_speed(a) / cpu_speed(b) for a, b in pairs]
    return {"ratio": statistics.median(wall), "low": min(wall), "high": max(wall), "cpu": statistics.median(cpu)}


def summarize(stage: str, size: str, variant: str, results: dict, shape: dict, peak: float) -> dict:
    medians = {name: statistics.median(speed(r) for r in runs) for name, runs in results.items() if runs}
    native = [name for name in NATIVE_TRL_ARMS[stage] if name in medians]
    row: dict = {"stage": stage, "size": size, "variant": variant, "speeds": medians}
    if "rlhfkit" not in medians or not native:
        return row
    best = max(native, key=medians.get)
    row.update(best_trl=best, vs_best=compare(results, "rlhfkit", best))
    if stage != "sft" and medians.get("trl_grouped"):
        row["vs_grouped"] = compare(results, "rlhfkit", "trl_grouped")
    if medians.get("trl_defaults"):
        row["vs_defaults"] = medians["rlhfkit"] / medians["trl_defaults"]
    if medians.get("rlhfkit_bf16") and medians.get("trl_bf16"):
        row["bf16"] = compare(results, "rlhfkit_bf16", "trl_bf16")
    def achieved(name: str) -> float:
        return statistics.median(useful_flops(r, shape, stage) / sum(r["step_seconds"]) for r in results[name])

    row.update(flops=achieved("rlhfkit"), trl_flops=achieved(best))
    row.update(peak_fraction=row["flops"] / peak, trl_peak_fraction=row["trl_flops"] / peak)
    per_cpu_second = [useful_flops(r, shape, stage) / sum(r["step_cpu_seconds"]) for r in results["rlhfkit"]]
    row["cpu_peak_fraction"] = statistics.median(per_cpu_second) / peak
    loads = [r["load"] for runs in results.values() for r in runs if "load" in r]
    row["load"] = statistics.mean(loads) if loads else None
    row["padding"] = {name: 1 - sum(sum(r["step_computed"]) for r in runs) / sum(sum(r["step_cells"]) for r in runs)
                      for name, runs in results.items() if runs}
    return row


def markdown(rows: list[dict], peak: float, command: str, load: str) -> str:
    def ratio(c: dict) -> str:
        return f"**{c['ratio']:.2f}×** ({c['low']:.2f}–{c['high']:.2f}; CPU {c['cpu']:.2f}×)"

    lines = [f"Command: `{command}`", "", f"Machine: {load}", "",
             "| stage | size | data | rlhfkit tok/s | TRL fastest settings tok/s (arm) | rlhfkit / TRL fastest "
             "| TRL + length column tok/s | rlhfkit / that | TRL defaults tok/s (ratio) | padding rlhfkit / TRL |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s = row["speeds"]
        if "vs_best" not in row:
            lines.append(f"| {row['stage']} | {row['size']} | {row['variant']} | (a side failed) |||||||")
            continue
        grouped = (f"{s['trl_grouped']:.0f} | {ratio(row['vs_grouped'])}" if "vs_grouped" in row else "– | –")
        defaults = f"{s['trl_defaults']:.0f} ({row['vs_defaults']:.1f}×)" if "vs_defaults" in row else "–"
        best = row["best_trl"]
        lines.append(f"| {row['stage']} | {row['size']} | {row['variant']} | {s['rlhfkit']:.0f} | {s[best]:.0f} "
                     f"({best}) | {ratio(row['vs_best'])} | {grouped} | {defaults} | "
                     f"{row['padding']['rlhfkit']:.0%} / {row['padding'][best]:.0%} |")
    lines += ["", f"float32 matmul peak (torch.mm, same threads): {peak / 1e9:.1f} GFLOP/s", "",
              "| stage | size | data | rlhfkit useful GFLOP/s | fraction of peak | per CPU-second | TRL fastest settings: "
              "GFLOP/s, fraction | load during the cell |", "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['size']} | {r['variant']} | {r['flops'] / 1e9:.1f} | **{r['peak_fraction']:.0%}** | "
              f"{r['cpu_peak_fraction']:.0%} | {r['trl_flops'] / 1e9:.1f}, {r['trl_peak_fraction']:.0%} | "
              f"{'?' if r['load'] is None else format(r['load'], '.1f')} |" for r in rows if "flops" in r]
    bf16 = [r for r in rows if "bf16" in r]
    if bf16:
        lines += ["", "bf16 autocast on both sides (information):", "",
                  "| stage | size | data | rlhfkit bf16 tok/s | TRL bf16 tok/s | ratio | rlhfkit bf16 / fp32 |",
                  "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['size']} | {r['variant']} | {r['speeds']['rlhfkit_bf16']:.0f} | "
                  f"{r['speeds']['trl_bf16']:.0f} | {ratio(r['bf16'])} | "
                  f"{r['speeds']['rlhfkit_bf16'] / r['speeds']['rlhfkit']:.2f}× |" for r in bf16]
    return "\n".join(lines)


def resummarize(root: Path) -> str:
    """The tables of a kept run, from its ``results/*.json`` and ``run.json``."""
    run = json.loads((root / "run.json").read_text())
    cells: dict = {}
    for path in sorted((root / "results").glob("*.json")):
        result = json.loads(path.read_text())
        job = result["job"]
        cells.setdefault((job["stage"], job["size"], job["variant"]), {}).setdefault(job["arm"], []).append(result)
    order = {"sft": 0, "reward": 1, "dpo": 2, "4m": 0, "30m": 1, "variable": 0, "equal": 1}
    keys = sorted(cells, key=lambda k: (order[k[1]], order[k[0]], order[k[2]]))
    peak = max(run["peaks"])
    rows = [summarize(*key, cells[key], run["shapes"][key[1]], peak) for key in keys]
    return markdown(rows, peak, run["command"], run["load"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4m", "30m"], choices=["4m", "30m"])
    parser.add_argument("--stages", nargs="+", default=["sft", "reward", "dpo"], choices=["sft", "reward", "dpo"])
    parser.add_argument("--variants", nargs="+", default=["variable", "equal"], choices=["variable", "equal"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (one epoch)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps not timed (at least 1)")
    parser.add_argument("--batch-sft", type=int, default=16, help="sequences per SFT step")
    parser.add_argument("--batch-pairs", type=int, default=8, help="pairs per reward / DPO step")
    parser.add_argument("--no-defaults", dest="defaults", action="store_false", help="skip TRL's defaults")
    parser.add_argument("--defaults-warmup", type=int, default=1)
    parser.add_argument("--defaults-timed", type=int, default=2)
    parser.add_argument("--trl-extra", action="store_true", help="also time TRL's padding_free SFT")
    parser.add_argument("--bf16", action="store_true", help="also time both sides with bf16 autocast (information)")
    parser.add_argument("--keep", type=Path, default=None, help="keep models, data, logs and results here")
    parser.add_argument("--json", type=Path, default=None, help="write the summary rows here")
    parser.add_argument("--resummarize", type=Path, default=None, metavar="DIR",
                        help="print the tables again from a --keep folder of a finished run (nothing is run)")
    args = parser.parse_args()
    if args.resummarize:
        print(resummarize(args.resummarize))
        return
    if args.warmup < 1 or args.defaults_warmup < 1 or args.steps < args.warmup + 1:
        parser.error("--warmup and --defaults-warmup must be >= 1 and leave --steps at least one timed step")
    if not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON} is missing: run `bash benchmarks/setup_trl.sh` first")
    command = ".venv/bin/python benchmarks/bench_vs_trl.py " + " ".join(sys.argv[1:])
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    for sub in ("results", "logs", "work"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    peaks = [matmul_peak(args.threads)]
    print(f"torch {torch.__version__}, {args.threads} thread(s); matmul peak {peaks[0] / 1e9:.1f} GFLOP/s; "
          f"load average {load_before[0]:.2f}; files in {root}")
    assets = build_assets(root, args.sizes, args.stages, args.variants, args)
    cells = {}
    for size, stage, variant in itertools.product(args.sizes, args.stages, args.variants):
        print(f"\n[{stage} {size} {variant}]")
        cells[stage, size, variant] = run_cell(stage, size, variant, assets, root, args)
    peaks.append(matmul_peak(args.threads))
    peak = max(peaks)
    rows = [summarize(stage, size, variant, results, assets["shapes"][size], peak)
            for (stage, size, variant), results in cells.items()]
    load_after = os.getloadavg()
    load = (f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1-minute; {os.cpu_count()} cores); "
            f"matmul peak {peaks[0] / 1e9:.1f} before, {peaks[1] / 1e9:.1f} GFLOP/s after")
    print("\n" + markdown(rows, peak, command, load))
    (root / "run.json").write_text(json.dumps({"peaks": peaks, "load": load, "command": command,
                                               "shapes": assets["shapes"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak": peak, "load": load, "command": command}, indent=1,
                                        default=str))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
