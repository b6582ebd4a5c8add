"""Small pure helpers of the training loop: the learning-rate schedule, resume compatibility, memory.

Kept apart from ``loop.py`` so each can be tested without a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from rlhfkit.engine.determinism import capture_rng_state, restore_rng_state
from rlhfkit.engine.train_config import (
    BATCH_SPLIT_KEYS,
    RUN_LENGTH_KEYS,
    SAFE_TO_CHANGE_ON_RESUME,
    TrainConfig,
    resume_conflict,
)

SCHEDULES = ("linear", "cosine", "constant")


def lr_multiplier(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """Factor applied to the peak lr at optimizer step ``step`` (1-based) of a run of ``total_steps``.

    Warm-up (``W = warmup_steps``): ``step / W`` for ``step ≤ W`` — the first step already learns (no
    wasted step at lr 0). Then, with ``p = (step − W − 1) / (total_steps − W)`` ∈ [0, 1):
    ``linear``: ``1 − p``; ``cosine``: ``(1 + cos πp) / 2``; ``constant``: 1. So the first step after
    warm-up uses the peak lr and the last step ``1/(total_steps − W)`` of it (linear), never exactly 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if schedule == "constant" or decay_steps <= 0:
        return 1.0
    progress = min(max((step - warmup_steps - 1) / decay_steps, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """A LambdaLR following :func:`lr_multiplier`, stepped once at the end of every step.

    LambdaLR passes the number of scheduler steps taken so far, ``k``; the optimizer steps that follow
    belong to step ``k + 1``. The multiplier is a closure (not an object) so that LambdaLR's state_dict
    carries no copy of the run length for a resume to restore over a new one.
    """
    def multiplier(k: int) -> float:
        return lr_multiplier(k + 1, schedule, warmup_steps, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def default_param_groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """AdamW groups: matrices (weights, embeddings) are decayed; biases and norm gains are not — decaying
    them towards 0 only hurts (the usual GPT-2/nanoGPT split)."""
    groups = [{"params": [p for p in params if p.ndim >= 2]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(param_groups: list[dict], config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_eps, weight_decay=config.weight_decay)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen inputs and LoRA).

    transformers 5 names it ``activation_checkpointing_enable``; older versions (and PEFT's forwarding)
    ``gradient_checkpointing_enable``.
    """
    from rlhfkit.config import ConfigError

    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(f"gradient_checkpointing=true but {type(model).__name__} cannot recompute "
                          "activations (no activation_checkpointing_enable()); set it to false")


# ----------------------------------------------------------------------------- resume compatibility


def config_record(config: TrainConfig, run_config: Any, data: dict[str, int]) -> dict[str, Any]:
    """What a checkpoint stores about the run's settings (``config.json``)."""
    run = dataclasses.asdict(run_config) if dataclasses.is_dataclass(run_config) else None
    return {"train": dataclasses.asdict(config), "run": run, "data": data}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def train_prefix(run_config: Any) -> str:
    """Dotted path of the TrainConfig inside the stage config (``"train."``), or ``""``."""
    if not dataclasses.is_dataclass(run_config):
        return ""
    for f in dataclasses.fields(run_config):
        value = getattr(run_config, f.name)
        if isinstance(value, TrainConfig):
            return f.name + "."
        inner = train_prefix(value)
        if inner:
            return f"{f.name}.{inner}"
    return ""


def resume_problem(record: dict[str, Any], data_now: dict[str, int], config: TrainConfig,
                   run_config: Any = None, safe_to_change: tuple[str, ...] = ()) -> str | None:
    """Why a run with ``config`` cannot continue the checkpoint described by ``record``, or None."""
    saved_data, saved_train = record["data"], record["train"]
    if saved_data["num_examples"] != data_now["num_examples"]:
        return (f"it was trained on a dataset of {saved_data['num_examples']} examples and the dataset now "
                f"has {data_now['num_examples']}; resume with the same data, or choose a new output_dir")
    if saved_data["global_batch_size"] != data_now["global_batch_size"]:
        return (
            "the global batch (per_device_batch_size × grad_accum_steps × processes) was "
            f"{saved_train['per_device_batch_size']} × {saved_train['grad_accum_steps']} × "
            f"{saved_data['num_processes']} = {saved_data['global_batch_size']} and is now "
            f"{config.per_device_batch_size} × {config.grad_accum_steps} × {data_now['num_processes']} = "
            f"{data_now['global_batch_size']}; change them only so that the product stays the same")
    prefix = train_prefix(run_config)
    current = dataclasses.asdict(config)
    key = resume_conflict(saved_train, current)
    if key is not None:
        hint = ""
        if key in RUN_LENGTH_KEYS:
            hint = (" (the learning-rate schedule depends on the run length; max_steps and num_epochs may "
                    "change only with lr_schedule=constant and no warmup_ratio)")
        return _differs(prefix + key, saved_train.get(key), current.get(key), hint)
    if record.get("run") is not None and run_config is not None:
        saved_run, current_run = _flatten(record["run"]), _flatten(dataclasses.asdict(run_config))
        for key in sorted(set(saved_run) | set(current_run)):
            if saved_run.get(key) == current_run.get(key) or (prefix and key.startswith(prefix)):
                continue
            if any(key == s or key.startswith(s + ".") for s in safe_to_change):
                continue
            return _differs(key, saved_run.get(key), current_run.get(key), "")
    return None


def _differs(key: str, old: Any, new: Any, hint: str) -> str:
    safe = sorted(SAFE_TO_CHANGE_ON_RESUME | BATCH_SPLIT_KEYS)
    return (f"{key} was {old!r} in the checkpoint and is {new!r} now{hint}. Set it back to resume, or "
            f"choose a new output_dir to start a fresh run. (Training keys that may change on resume: "
            f"{', '.join(safe)}.)")


# ----------------------------------------------------------------------------- memory


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (``ru_maxrss``) and, on GPU, peak CUDA memory allocated."""
    out: dict[str, float] = {}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["memory/peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes vs KiB
    except ImportError:  # pragma: no cover - Windows
        pass
    if torch.cuda.is_available():
        out["memory/peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocation failures (the Linux OOM killer's SIGKILL cannot be caught)."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def oom_message(config: TrainConfig, step: int, saved: Path | None, latest: Path | None) -> str:
    b, a = config.per_device_batch_size, config.grad_accum_steps
    text = (f"out of memory at step {step} (per_device_batch_size={b}, grad_accum_steps={a}, "
            f"gradient_checkpointing={str(config.gradient_checkpointing).lower()}). ")
    if saved is not None:
        text += f"Saved {saved.name}, the state before step {step}. "
    else:
        text += f"No new checkpoint was written; the latest is {latest.name if latest else 'none'}. "
    fixes = []
    if b > 1:
        fixes.append(f"lower per_device_batch_size and raise grad_accum_steps by the same factor (e.g. "
                     f"per_device_batch_size={b // 2} grad_accum_steps={a * 2}: the same global batch, so "
                     "the run resumes unchanged)")
    if not config.gradient_checkpointing:
        fixes.append("set gradient_checkpointing=true")
    fixes.append("shorten the sequences (max_length) or train LoRA adapters")
    return text + "To fix: " + "; or ".join(fixes) + ". Then re-run the same command to resume."


def nonfinite_message(config: TrainConfig, kind: str, value: float, where: str, latest: str,
                      consecutive: int) -> str:
    advice = (f"lower lr (now {config.lr:g}) or max_grad_norm, check those examples for empty or extreme "
              "rows, or use mixed_precision=no")
    if config.nonfinite == "stop":
        return (f"non-finite {kind} ({value}) at {where}: no optimizer step was taken and no checkpoint "
                f"written after it (latest checkpoint: {latest}). To fix: {advice}; or set nonfinite=skip "
                "to skip such steps.")
    return (f"{consecutive} non-finite optimizer steps in a row (max_consecutive_skips="
            f"{config.max_consecutive_skips}), the last at {where}: stopping; latest checkpoint: {latest}. "
            f"To fix: {advice}.")


# ----------------------------------------------------------------------------- misc


def make_accelerator(mixed_precision: str):
    """An ``accelerate.Accelerator`` for this run.

    Accelerate keeps one process-wide state and refuses a second Accelerator with another mixed-precision
    setting; stages run one after another in one process (``rlhfkit demo``) may differ, so the settings
    part of that state is reset — the process-group part (``PartialState``) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(mixed_precision=mixed_precision)


@contextlib.contextmanager
def preserved_rng():
    """Run a block (evaluation) without changing the global RNG states seen after it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class OutputDirLock:
    """An exclusive lock on ``output_dir/.lock`` so two runs never write one folder (released by the OS
    when the process dies, even by SIGKILL)."""

    def __init__(self, output_dir: Path, enabled: bool = True) -> None:
        self.path = Path(output_dir) / ".lock"
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        if not self.enabled:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"{self.path.parent} is in use by another run (it holds {self.path}); wait "
                               "for it to finish or choose another output_dir") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
