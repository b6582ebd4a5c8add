"""A whole training checkpoint: what every process writes into ``checkpoint-{step}`` and reads back at resume.

The atomic folder itself (temporary folder, manifest with CRC-32, rename, rotation) is ``checkpoint.py``; the
model and optimizer shards under FSDP2 are ``sharded_checkpoint.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhfkit.engine.checkpoint import (
    _WRITTEN_CRC,
    OPTIMIZER,
    PREFIX,
    TMP_PREFIX,
    begin_checkpoint,
    commit_checkpoint,
    has_optimizer_state,
    load_model,
    load_torch,
    read_json,
    rotate_checkpoints,
    save_model,
    save_torch,
    write_json,
)


def save_training_checkpoint(accelerator: Any, output_dir: Path, step: int, *, model: torch.nn.Module,
                             optimizer: Any, scheduler: Any, tokenizer: Any, trainer_state: dict,
                             config: dict, rng: dict, stage: dict | None, keep: int,
                             sharded: bool = False) -> Path:
    """Write ``checkpoint-{step}`` atomically and rotate; every process calls it (barriers inside).

    Every process writes its RNG (and stage) state — and with ``sharded`` (FSDP2) its shards of the model and
    optimizer (``sharded_checkpoint``); the main process writes the rest, commits and rotates.
    ``model`` is the unwrapped model.
    """
    tmp = Path(output_dir) / f"{TMP_PREFIX}{step}"
    if accelerator.is_main_process:
        begin_checkpoint(output_dir, step)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    save_torch(rng, tmp / f"rng_rank{rank}.pt")
    if stage is not None:
        save_torch(stage, tmp / f"stage_rank{rank}.pt")
    if sharded:
        from rlhfkit.engine import sharded_checkpoint

        sharded_checkpoint.save(model, optimizer, tmp)
    if not accelerator.is_main_process:
        _WRITTEN_CRC.clear()  # the main process writes the manifest (reading these files back)
    accelerator.wait_for_everyone()
    final = Path(output_dir) / f"{PREFIX}{step}"
    if accelerator.is_main_process:
        if sharded:
            kind = "dcp"
        else:
            kind = save_model(model, tmp / "model", tokenizer)
            save_torch(optimizer.state_dict(), tmp / OPTIMIZER)
        save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / "trainer_state.json", {**trainer_state, "model_format": kind})
        write_json(tmp / "config.json", config)
        final = commit_checkpoint(tmp, step, {"model_format": kind})
        rotate_checkpoints(output_dir, keep, protect=final)
    accelerator.wait_for_everyone()
    return final


def load_training_checkpoint(path: Path, rank: int, *, model: torch.nn.Module, optimizer: Any,
                             scheduler: Any) -> tuple[dict, dict | None, dict | None]:
    """Load model, optimizer and scheduler from ``path``; return (trainer state, this rank's RNG state or
    None when the checkpoint had fewer processes, the stage state — this rank's, else rank 0's — or None).
    A retired checkpoint (see :func:`retire_checkpoints`) leaves the optimizer as it is."""
    state = read_json(path / "trainer_state.json")
    if state["model_format"] == "dcp":  # written under FSDP2: re-sliced for this run's processes
        from rlhfkit.engine import sharded_checkpoint

        sharded_checkpoint.load(model, optimizer, path, has_optimizer_state(path))
    else:  # (a sharded model never gets here: TrainLoop refuses that resume first)
        load_model(model, path / "model", state["model_format"])
        if has_optimizer_state(path):
            optimizer.load_state_dict(load_torch(path / OPTIMIZER))
    scheduler.load_state_dict(load_torch(path / "scheduler.pt"))
    rng_file, stage_file = path / f"rng_rank{rank}.pt", path / f"stage_rank{rank}.pt"
    if not stage_file.exists():
        stage_file = path / "stage_rank0.pt"
    rng = load_torch(rng_file) if rng_file.exists() else None
    stage = load_torch(stage_file) if stage_file.exists() else None
    return state, rng, stage
