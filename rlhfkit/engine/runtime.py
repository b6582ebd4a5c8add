"""How a stage uses this machine: its torch thread count, and its precision (``mixed_precision: auto``).

``threads`` (``train.threads`` of every stage; the world build's, the demo's and ``iterate``'s top-level
``threads``; ``--threads`` of ``eval`` and ``label``): torch's intra-op thread count for the whole stage —
encoding, reference log-probs, generation and training — set before any work; 0 leaves it as it is (torch's
default is one thread per core). One thread is often fastest for small models on a busy machine.

``mixed_precision: auto``: bf16 autocast only where a short matmul probe finds it faster on this machine.

bf16 autocast halves the world's pretraining step on a CPU with native bf16 matrix units (AVX512-BF16 or
AMX: 137 → 72 ms a step, README), and makes it 30–100× *slower* on one without them (the 2-core AMD EPYC
development machine, AVX2 only: bf16 0.6–2.4 GFLOP/s against float32 51–93 per thread): a fixed default is
wrong on one of the two. So ``auto`` times the
operation autocast changes — a linear layer on float32 activations, under ``torch.autocast(bfloat16)`` (the
casts included, as in training) and in plain float32 — alternating the two a few times and keeping each
one's best rate (the fastest repeat is the one least disturbed by other jobs), then picks bf16 only when it
is at least :data:`BF16_MIN_SPEEDUP` times faster. A margin that wide keeps the choice stable from run to run
on a given machine (the two kinds of machine above are 2× apart in one direction or 100× in the other).

The probe runs on the device the run trains on (CUDA when there is one, else the CPU; Apple's MPS is not
probed and gets float32). On a CPU it runs on one
thread: the ratio of the two rates is the hardware's, and one thread keeps it readable on a busy machine,
where several threads stall on each other and both rates collapse towards the same noise (measured on the
2-core development machine under load: 1 thread 0.01–0.04×, 2 threads 0.5–0.95×). It takes well under a
second (``budget_s``; on a CPU without native bf16 the few bf16 repeats are the slow part).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

PRECISIONS = ("no", "bf16")
"""What a run executes: float32, or bfloat16 autocast (weights and optimizer stay float32)."""
CHOICES = ("auto", *PRECISIONS)
"""What a config may ask for."""
BF16_MIN_SPEEDUP = 1.25
"""``auto`` picks bf16 when its matmul rate is at least this many times float32's."""
PROBE_SHAPES = {"cpu": (512, 256), "cuda": (8192, 4096)}
"""(rows, width) of the probe's ``x (rows, width) @ W (width, width)``: about a small model's linear layer
on a CPU; large enough on a GPU that kernel launches do not hide the arithmetic."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "no" (float32) or "bf16"
    reason: str  # one line for the log: the measured rates, or why nothing was measured
    fp32_gflops: float | None = None  # best measured float32 rate
    bf16_gflops: float | None = None  # best measured rate under bf16 autocast
    probe_seconds: float | None = None
    device: str = "cpu"

    def record(self) -> dict:
        """What a run writes down about the choice (``build.json`` of the world)."""
        return {"mixed_precision": self.precision, "device": self.device, "fp32_gflops": self.fp32_gflops,
                "bf16_gflops": self.bf16_gflops, "probe_seconds": self.probe_seconds,
                "bf16_min_speedup": BF16_MIN_SPEEDUP}


def set_threads(threads: int) -> None:
    """torch's intra-op thread count for the rest of the process; 0 keeps the current one."""
    if threads:
        torch.set_num_threads(threads)


def probe_device() -> str:
    """The device a run trains on when nothing says otherwise (accelerate's default): CUDA, Apple's MPS,
    else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def measure_matmul_rates(device: str = "cpu", *, budget_s: float = 0.2, min_rounds: int = 2,
                         max_rounds: int = 30, slice_s: float = 0.01) -> tuple[float, float, float]:
    """``(float32 GFLOP/s, bf16-autocast GFLOP/s, seconds spent)``: each the best of alternating repeats.

    Each round times each op for ``slice_s`` (at least once), so the cheaper op gets as many chances to
    run undisturbed as the dearer one. Rounds stop after ``max_rounds``, or once ``budget_s`` is spent and
    ``min_rounds`` are done."""
    rows, width = PROBE_SHAPES["cuda" if device.startswith("cuda") else "cpu"]
    device_type = torch.device(device).type
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=generator).to(device)
    w = torch.randn(width, width, generator=generator).to(device) / width**0.5
    flops = 2.0 * rows * width * width

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    def fp32() -> None:
        torch.nn.functional.linear(x, w)

    def bf16() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            torch.nn.functional.linear(x, w)

    def seconds(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    started = time.perf_counter()
    best = {"fp32": float("inf"), "bf16": float("inf")}
    with torch.no_grad(), _one_thread_on_cpu(device_type):
        fp32(), bf16()  # first calls choose and build kernels: not timed
        for done in range(1, max_rounds + 1):
            for name, fn in (("fp32", fp32), ("bf16", bf16)):
                slice_end = time.perf_counter() + slice_s  # a cheap op is timed several times a round
                while True:
                    best[name] = min(best[name], seconds(fn))
                    if time.perf_counter() >= slice_end:
                        break
            if done >= min_rounds and time.perf_counter() - started > budget_s:
                break
    return flops / best["fp32"] / 1e9, flops / best["bf16"] / 1e9, time.perf_counter() - started


@contextlib.contextmanager
def _one_thread_on_cpu(device_type: str):
    threads = torch.get_num_threads()
    if device_type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decide(fp32_gflops: float, bf16_gflops: float) -> str:
    """``bf16`` when it is at least :data:`BF16_MIN_SPEEDUP` times faster than float32, else ``no``."""
    return "bf16" if bf16_gflops >= BF16_MIN_SPEEDUP * fp32_gflops else "no"


def choose_precision(requested: str, device: str | None = None) -> PrecisionChoice:
    """Resolve a config's ``mixed_precision``: ``no``/``bf16`` as asked, ``auto`` by the matmul probe."""
    if requested not in CHOICES:
        raise ValueError(f"mixed_precision: expected one of {', '.join(CHOICES)}, got {requested!r}")
    device = device or probe_device()
    if requested != "auto":
        return PrecisionChoice(requested, "set in the config", device=device)
    if torch.device(device).type not in ("cpu", "cuda"):
        return PrecisionChoice("no", f"no probe for {device}: float32", device=device)
    fp32_rate, bf16_rate, spent = measure_matmul_rates(device)
    precision = decide(fp32_rate, bf16_rate)
    where = (f"cpu ({torch.backends.cpu.get_cpu_capability()}), per thread" if device == "cpu" else device)
    picked = "bf16 autocast" if precision == "bf16" else "float32"
    reason = (f"{picked}: matmul under bf16 autocast {bf16_rate:.1f} GFLOP/s vs float32 {fp32_rate:.1f} "
              f"({bf16_rate / fp32_rate:.2f}×; bf16 needs ≥ {BF16_MIN_SPEEDUP}×) on {where}, "
              f"probe {1000 * spent:.0f} ms")
    return PrecisionChoice(precision, reason, round(fp32_rate, 2), round(bf16_rate, 2), round(spent, 3), device)


def resolve_run_precision(output_dir) -> str:
    """What ``train.mixed_precision: auto`` means for the run in ``output_dir``: the precision of its latest
    checkpoint when it resumes (never probed again), else the probe's choice on this process's device —
    rank 0's, sent to every process, so all of them train alike."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    from rlhfkit.engine import checkpoint as ckpt
    from rlhfkit.engine.metrics_log import say

    latest, _ = ckpt.find_latest_checkpoint(output_dir)
    if latest is not None:
        saved = ckpt.read_json(latest / "config.json")["train"].get("mixed_precision")
        if saved in PRECISIONS:
            say(f"precision: {saved} (mixed_precision=auto), as {latest.name} that this run resumes")
            return saved
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    choice = choose_precision("auto", str(state.device))
    decided = [choice.precision, choice.reason]
    if state.num_processes > 1:
        broadcast_object_list(decided)  # from the main process
    say(f"precision: {decided[1]}")
    return decided[0]
