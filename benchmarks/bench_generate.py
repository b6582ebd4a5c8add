"""Generation throughput: rlhfkit's `generate` against plain `model.generate`, same model, prompts and settings.

    .venv/bin/python benchmarks/bench_generate.py                      # 4m and small, greedy and sampled
    .venv/bin/python benchmarks/bench_generate.py --sizes 4m --new-tokens 128 --repeats 7 --threads 1

Models: Llama-style from configs with random weights (``rlhfkit.models.tiny``), vocabulary 2048, weights
drawn with std 0.1 (with the usual 0.02 a random model repeats one token forever; 0.1 makes it wander through
the vocabulary like text); random prompt ids, lengths jittered uniformly in [prompt_len − jitter,
prompt_len + jitter], left-padded for both. Both sides decode the same batch with the same settings (KV cache
on: ``model.generate(use_cache=True)``; greedy, or sampling at the given temperature / top-p with top-k off).

Two scenarios:
  fixed   EOS = the config's id, which a random model almost never emits: every row runs to max_new_tokens.
  ragged  EOS = the few tokens a first greedy (or sampled) run emits most often mid-response, as a set of
          EOS ids, so rows end at various steps (mean length printed) — what PPO rollouts look like. ``model.generate`` keeps
          computing finished rows until the last one ends; rlhfkit drops them from the batch.

This machine's speed drifts by ±15–20 % (other processes share its cores), so runs alternate A/B and the
report quotes medians: tokens/s of each side (generated token slots, B × response width, per second) and two
ratios — of the medians, and the median of the per-repeat ratios (each A/B pair ran back to back) — plus
the median per-repeat ratio of tokens per CPU-second of this process ("cpu ratio"; one thread, so it only
leaves out the time the process waited for a core).
Tokens/s counts response tokens up to and including EOS (B × max_new_tokens in the fixed scenario). Greedy
outputs are compared token for token. ``--profile`` prints the top operators of one rlhfkit run.

``--precision bf16`` runs both sides inside ``torch.autocast("cpu", torch.bfloat16)`` (float32 weights, bf16
matrix products — what ``train.mixed_precision=bf16`` does in PPO). rlhfkit then keeps the KV cache and the
attention in float32 (the CPU attention kernel is slow in bf16 at one query per row); ``model.generate`` runs
everything the autocast casts in bf16. Greedy outputs then differ where bf16 rounding flips a near-tie, so the
last column gives the share of identical rows instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhfkit.models.tiny import tiny_config
from rlhfkit.rollout.generate import generate, left_pad

VOCAB = 2048
EOS, PAD, BOS = 2, 0, 1


def build(size: str, seed: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", size, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    config.initializer_range = 0.1
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def random_prompts(batch: int, prompt_len: int, jitter: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt_len - jitter, prompt_len + jitter + 1, (batch,), generator=g).tolist()
    return [[BOS] + torch.randint(3, VOCAB, (n - 1,), generator=g).tolist() for n in lengths]


def response_tokens(response_ids: torch.Tensor, eos_ids: list[int]) -> int:
    """Number of response tokens up to and including each row's first EOS."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids))
    ended_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly earlier in the row
    return int((~ended_before).sum())


def run_hf(model, prompts, args, greedy: bool, seed: int, eos_ids: list[int]) -> torch.Tensor:
    ids, mask = left_pad(prompts, PAD)
    torch.manual_seed(seed)  # model.generate samples from the global RNG
    sampling = {} if greedy else dict(temperature=args.temperature, top_p=args.top_p, top_k=0)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=not greedy,
                             use_cache=True, eos_token_id=eos_ids, pad_token_id=PAD, **sampling)
    return out[:, ids.shape[1]:]


def run_ours(model, prompts, args, greedy: bool, seed: int, eos_ids: list[int]) -> torch.Tensor:
    out = generate(model, prompts, max_new_tokens=args.new_tokens, greedy=greedy, temperature=args.temperature,
                   top_p=args.top_p, eos_token_id=eos_ids, pad_token_id=PAD,
                   generator=torch.Generator().manual_seed(seed))
    return out.response_ids


def ragged_eos_ids(model, prompts, args, target_mean: float, greedy: bool) -> list[int]:
    """The most frequent mid-response tokens (of a greedy or a sampled run), as many as needed for a mean
    length ≤ target_mean in that run."""
    tokens = run_ours(model, prompts, args, greedy, 10_000, [VOCAB + 1])  # an id never emitted: full length
    counts = torch.bincount(tokens[:, 4:-4].flatten(), minlength=VOCAB)
    eos_ids = []
    for token in counts.argsort(descending=True).tolist():
        eos_ids.append(token)
        if response_tokens(tokens, eos_ids) / len(prompts) <= target_mean:
            break
    return eos_ids


def timed(fn, *a) -> tuple[float, float, torch.Tensor]:
    """Wall-clock seconds, CPU seconds of this process, and the result of ``fn(*a)``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn(*a)
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def compare(model, prompts, eos_ids: list[int], greedy: bool, args) -> dict:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        return compare_in_precision(model, prompts, eos_ids, greedy, args)


def compare_in_precision(model, prompts, eos_ids: list[int], greedy: bool, args) -> dict:
    run_hf(model, prompts[:4], args, greedy, 0, eos_ids)  # warm-up (lazy inits, allocator)
    run_ours(model, prompts[:4], args, greedy, 0, eos_ids)
    hf_tps, our_tps, pair_ratios, cpu_ratios, lengths = [], [], [], [], []
    identical, same_rows = True, []
    for rep in range(args.repeats):
        # alternate which side goes first, so a slow spell does not always hit the same side
        order = [("hf", run_hf), ("ours", run_ours)] if rep % 2 == 0 else [("ours", run_ours), ("hf", run_hf)]
        results = {name: timed(fn, model, prompts, args, greedy, rep, eos_ids) for name, fn in order}
        (t_hf, cpu_hf, out_hf), (t_ours, cpu_ours, out_ours) = results["hf"], results["ours"]
        n_hf, n_ours = response_tokens(out_hf, eos_ids), response_tokens(out_ours, eos_ids)
        hf_tps.append(n_hf / t_hf)
        our_tps.append(n_ours / t_ours)
        pair_ratios.append(our_tps[-1] / hf_tps[-1])
        cpu_ratios.append((n_ours / cpu_ours) / (n_hf / cpu_hf))
        lengths.append(n_ours / len(prompts))
        if greedy:
            identical &= out_hf.shape == out_ours.shape and torch.equal(out_hf, out_ours)
            if out_hf.shape == out_ours.shape:
                same_rows.append(float((out_hf == out_ours).all(dim=1).float().mean()))
    return dict(mode="greedy" if greedy else "sampled", hf_tps=statistics.median(hf_tps),
                our_tps=statistics.median(our_tps), ratio=statistics.median(our_tps) / statistics.median(hf_tps),
                pair_ratio=statistics.median(pair_ratios), cpu_ratio=statistics.median(cpu_ratios),
                identical=(identical if args.precision == "fp32" else f"{statistics.mean(same_rows or [0]):.0%} rows")
                if greedy else None,
                mean_length=statistics.mean(lengths))


def profile(size: str, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = build(size, args.seed)
    prompts = random_prompts(args.batch, args.prompt_len, args.jitter, args.seed)
    run_ours(model, prompts[:4], args, True, 0, [EOS])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ours(model, prompts, args, True, 0, [EOS])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4m", "small"])
    parser.add_argument("--modes", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"])
    parser.add_argument("--scenarios", nargs="+", default=["fixed", "ragged"], choices=["fixed", "ragged"])
    parser.add_argument("--ragged-mean", type=float, default=80.0, help="target mean response length (ragged)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--jitter", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: both sides under torch.autocast(bfloat16)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one rlhfkit run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, prompts "
          f"{args.prompt_len}±{args.jitter} tokens, {args.new_tokens} new tokens, T={args.temperature}, "
          f"top_p={args.top_p}, {args.repeats} alternating repeats, precision {args.precision}")
    if args.profile:
        for size in args.sizes:
            profile(size, args)
        return
    header = (f"{'size':6} {'scenario':8} {'mode':8} {'mean len':>8} {'HF tok/s':>9} {'ours tok/s':>10} "
              f"{'ratio':>6} {'pair ratio':>10} {'cpu ratio':>9}  greedy identical")
    print(header)
    for size in args.sizes:
        model = build(size, args.seed)
        prompts = random_prompts(args.batch, args.prompt_len, args.jitter, args.seed)
        for scenario in args.scenarios:
            for mode in args.modes:
                greedy = mode == "greedy"
                eos_ids = [EOS] if scenario == "fixed" else ragged_eos_ids(model, prompts, args, args.ragged_mean,
                                                                           greedy)
                r = compare(model, prompts, eos_ids, greedy, args)
                same = "-" if r["identical"] is None else str(r["identical"])
                print(f"{size:6} {scenario:8} {r['mode']:8} {r['mean_length']:8.1f} {r['hf_tps']:9.0f} "
                      f"{r['our_tps']:10.0f} {r['ratio']:6.2f} {r['pair_ratio']:10.2f} {r['cpu_ratio']:9.2f}  {same}",
                      flush=True)


if __name__ == "__main__":
    main()
