"""The categorical sampler: speed of rlhfkit's exact float64 inverse CDF against the float32 one it replaced and
the usual alternatives, and how far each one's distribution is from the true one.

    .venv/bin/python benchmarks/bench_sampler.py                       # vocab 2048 and 151,936, batch 64
    .venv/bin/python benchmarks/bench_sampler.py --vocabs 151936 --batch 8 --repeats 50

Samplers, each drawing one token per row of a (B, V) float32 probability tensor (what ``generate`` hands it):
  two-level     rlhfkit.ops.sample_categorical: float64 sums of blocks of ~√V entries pick a block, the float64
                cumulative sum of that block picks the token; one float64 uniform per row
  float32 cdf   the previous sampler: float32 cumulative sum over the vocabulary, one float32 uniform per row
  float64 cdf   the obvious fix: the same in float64
  gumbel-max    argmax(log p − log(−log U)): one uniform per vocabulary entry (exact, order-free)
  multinomial   torch.multinomial(p, 1)
Times are the median over ``--repeats`` calls of the whole sampler, including its random numbers (one thread).
"TV" is the total variation between the true distribution and the one the flat CDF samplers implement
(their interval widths, exact for a given probability tensor), on softmax(N(0, 3²) logits) rows, and "never
drawn" the tokens of positive probability with an empty interval; for the two-level sampler both are read off
by aiming a uniform at the middle of every token's true interval (first two rows): the mass and number of
tokens that land elsewhere. Gumbel-max and multinomial have no such table (exact up to their RNG).
This machine is shared (2 cores, other processes): compare ratios within one run, not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhfkit.ops import inverse_cdf, sample_categorical


def float32_cdf(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The sampler rlhfkit used before issue 17 (float32 cumulative sum)."""
    cdf = probs.cumsum(dim=-1)
    uniform = torch.rand((probs.shape[0], 1), generator=generator, dtype=cdf.dtype)
    return torch.searchsorted(cdf, (1.0 - uniform) * cdf[:, -1:]).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def float64_cdf(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    uniform = torch.rand((probs.shape[0], 1), generator=generator, dtype=cdf.dtype)
    return torch.searchsorted(cdf, (1.0 - uniform) * cdf[:, -1:]).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def gumbel_max(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(probs.shape, generator=generator, dtype=probs.dtype).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs.log() - (-uniform.log()).log()).argmax(dim=-1)


def multinomial(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


SAMPLERS = {"two-level": sample_categorical, "float32 cdf": float32_cdf, "float64 cdf": float64_cdf,
            "gumbel-max": gumbel_max, "multinomial": multinomial}


def implied_error(probs: torch.Tensor, dtype: torch.dtype) -> tuple[float, int]:
    """(mean total variation per row, mean number of never-drawn tokens per row) of a CDF sampler in ``dtype``."""
    cdf = probs.cumsum(dim=-1, dtype=dtype).double()
    widths = torch.diff(cdf, dim=-1, prepend=torch.zeros_like(cdf[:, :1])) / cdf[:, -1:]
    truth = probs.double() / probs.double().sum(dim=-1, keepdim=True)
    tv = 0.5 * (widths - truth).abs().sum(dim=-1)
    never = ((widths == 0) & (truth > 0)).sum(dim=-1).double()
    return float(tv.mean()), float(never.mean())


def two_level_error(probs: torch.Tensor, rows: int = 2) -> tuple[float, int]:
    """The same for rlhfkit's sampler (first ``rows`` rows): a uniform aimed at the middle of every token's true
    interval (float64 cumulative sums) must draw that token; returns the mean probability mass and number of
    the tokens it misses (0 and 0: every interval is where it should be, to float64 precision)."""
    truth = probs.double() / probs.double().sum(dim=-1, keepdim=True)
    cdf = truth.cumsum(dim=-1)
    middles = cdf - truth / 2
    missed, tv = [], []
    for row in range(min(rows, probs.shape[0])):
        drawn = torch.cat([inverse_cdf(probs[row : row + 1], 1.0 - middles[row : row + 1, i : i + 4096])[0]
                           for i in range(0, probs.shape[1], 4096)])
        wrong = (drawn != torch.arange(probs.shape[1])) & (truth[row] > 0)
        missed.append(float(wrong.sum()))
        tv.append(float(truth[row][wrong].sum()))
    return statistics.mean(tv), statistics.mean(missed)


def time_sampler(fn, probs: torch.Tensor, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    fn(probs, generator)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(probs, generator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[2048, 151_936])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--spread", type=float, default=3.0, help="std of the Gaussian logits")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"logits N(0, {args.spread}²), median of {args.repeats} calls")
    print(f"{'vocab':>7} {'sampler':12} {'ms/call':>8} {'vs float32 cdf':>14} {'TV':>9} {'never drawn':>11}")
    for vocab in args.vocabs:
        logits = torch.randn((args.batch, vocab), generator=torch.Generator().manual_seed(1)) * args.spread
        probs = logits.softmax(dim=-1)
        times = {name: time_sampler(fn, probs, args.repeats) for name, fn in SAMPLERS.items()}
        errors = {"float64 cdf": implied_error(probs, torch.float64), "float32 cdf": implied_error(probs, torch.float32),
                  "two-level": two_level_error(probs)}
        for name, seconds in times.items():
            tv, never = errors.get(name, (float("nan"), float("nan")))
            tv_text = "exact" if name in ("gumbel-max", "multinomial") else f"{tv:.1e}"
            never_text = "-" if name not in errors else f"{never:.0f}"
            print(f"{vocab:>7} {name:12} {seconds * 1e3:8.3f} {seconds / times['float32 cdf']:14.2f} "
                  f"{tv_text:>9} {never_text:>11}", flush=True)


if __name__ == "__main__":
    main()
