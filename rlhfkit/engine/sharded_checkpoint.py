"""The model and optimizer part of a checkpoint under FSDP2: one shard per process, with
``torch.distributed.checkpoint`` (DCP).

Every process writes its own shards into the checkpoint's temporary folder (``model_dcp/__{rank}_0.distcp``,
``optimizer_dcp/__{rank}_0.distcp``; rank 0 adds each folder's ``.metadata``); nothing is gathered. The rest of
the checkpoint is written as without FSDP (``training_checkpoint.save_training_checkpoint``): the main process lists
every file — the other processes' shards included — with its size and CRC-32 in the manifest, last, then
renames the folder. So a sharded checkpoint is as atomic as an unsharded one, and on several machines
``output_dir`` must be one filesystem that all of them see (a shared mount).

Loading reads the shards back through DCP, which re-slices them for the current processes: a run saved by N
processes resumes on M processes (the global batch must stay the same; the loop checks), and also in one
process without FSDP (the tensors are then whole). The state dicts are keyed by parameter name
(``get_state_dict``), not by optimizer index, so the same layout holds on both sides.
"""

from __future__ import annotations

from pathlib import Path

import torch

FORMAT = "dcp"  # the checkpoint's model_format
MODEL_DIR = "model_dcp"
OPTIMIZER_DIR = "optimizer_dcp"


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write this process's shards of the model and optimizer state into ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(model_state, checkpoint_id=str(folder / MODEL_DIR))
    dcp.save(optimizer_state, checkpoint_id=str(folder / OPTIMIZER_DIR))


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path, with_optimizer: bool) -> None:
    """Load the shards saved by :func:`save` into ``model`` (and ``optimizer``), re-sliced for this run's
    processes (a collective). Parameters stay the same objects, so the optimizer stays valid."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.load(model_state, checkpoint_id=str(folder / MODEL_DIR))
    if not with_optimizer:
        set_model_state_dict(model, model_state)
        return
    dcp.load(optimizer_state, checkpoint_id=str(folder / OPTIMIZER_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
