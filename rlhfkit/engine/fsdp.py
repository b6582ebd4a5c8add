"""Fully sharded data parallelism (PyTorch FSDP2, ``fully_shard``) for the training loop.

**Who shards.** rlhfkit shards the trained model itself, with ``torch.distributed.fsdp.fully_shard``, whenever
the launch asks for FSDP2 — ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` sets
``ACCELERATE_USE_FSDP=true`` and ``FSDP_VERSION=2`` in every process (torchrun / SLURM users set the two
variables themselves). It does not hand the model to ``Accelerator.prepare``: accelerate 1.16 builds FSDP
only for GPU processes — launched with ``ACCELERATE_USE_CPU=1`` (CPU processes joined by gloo) it silently
turns the same config into plain DDP, whole parameters on every process (``AcceleratorState`` only switches
``MULTI_GPU`` to ``FSDP``, never ``MULTI_CPU``). Sharding here is one code path on CPU and GPU, the one the
tests run.

**What is sharded.** Every decoder layer (the model's ``_no_split_modules``, or the classes named in
``fsdp_transformer_layer_cls_to_wrap``) is its own FSDP unit, gathered only while it runs; the root unit holds
the rest (embeddings, final norm, head; tied weights stay tied). Each parameter is a ``DTensor`` sharded on
dim 0 — about 1/N of it per process — and so are its gradient and its AdamW moments. Gradients are averaged
over processes by reduce-scatter, as DDP's all-reduce averages them, so the loop's loss weights are the same.

Imports torch only; transformers is not needed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from functools import partial
from typing import Any

import torch

from rlhfkit.config import ConfigError


def requested() -> bool:
    """Whether this process was launched for FSDP2 (``ACCELERATE_USE_FSDP=true``, ``FSDP_VERSION=2``)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("true", "1", "yes"):
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"the accelerate config asks for FSDP version {version}; rlhfkit supports FSDP2 only: "
                          "set fsdp_version: 2 in its fsdp_config (configs/accelerate/fsdp.yaml)")
    return True


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def layer_classes(model: torch.nn.Module) -> set[str]:
    """Names of the module classes that become their own FSDP unit: ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (comma
    separated, set by accelerate from ``fsdp_transformer_layer_cls_to_wrap``), else every ``_no_split_modules``
    declared in the model (a PEFT or value-head wrapper holds the transformers model that declares them)."""
    named = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    if named:
        return {name.strip() for name in named.split(",") if name.strip()}
    found: set[str] = set()
    for module in model.modules():
        found.update(getattr(module, "_no_split_modules", None) or ())
    return found


def meta_skeleton(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory), buffers included as they are:
    the frame the gathered weights are put back into for the final export (:func:`gathered_model`)."""
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="meta"),
                                             requires_grad=param.requires_grad)
    return copy.deepcopy(model, memo)


def shard(model: torch.nn.Module, device: torch.device, num_processes: int, *,
          units: tuple[torch.nn.Module, ...] = (), reshard_after_forward: bool | None = None) -> torch.nn.Module:
    """Shard ``model`` in place over all ``num_processes`` processes (one mesh dimension) and return it.

    Layers named by :func:`layer_classes` first, then ``units`` (submodules a stage calls on their own, e.g.
    PPO's policy for sampling), then the root. A unit gathers its parameters only around its own forward: a
    stage must not call a submodule that is no unit outside the model's forward (a head on captured hidden
    states) — capture that submodule's output inside the forward instead. Refuses a model with no such layer: one unit would gather the whole model in every forward, which saves
    no memory.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if reshard_after_forward is None:
        reshard_after_forward = _reshard_after_forward()
    classes = layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise ConfigError(f"FSDP2 found no layer to shard in {type(model).__name__} (its _no_split_modules "
                          "are empty); name the decoder layer class in fsdp_transformer_layer_cls_to_wrap of the "
                          "accelerate config")
    model.to(device)
    mesh = init_device_mesh(device.type, (num_processes,))
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "shard_placement_fn": partial(_placement, num_processes=num_processes)}
    for unit in [*layers, *(u for u in units if u is not None and u is not model)]:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    # FSDP2 takes as root the first unit to run a forward; sampling runs a submodule of the root first (the
    # policy inside PPO's ActorCritic), which would then count as a root of its own and break the next
    # forward of the real one. Initialising the root now settles it (private API: torch 2.13).
    model._get_fsdp_state()._lazy_init()
    return model


def _reshard_after_forward() -> bool:
    """``fsdp_reshard_after_forward`` of the accelerate config (default true): free each unit's gathered
    weights after its forward (gathered again for the backward) — less memory, one more all-gather."""
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"


def _placement(param: torch.nn.Parameter, num_processes: int):
    """Dim 0 (FSDP2's default), except for a matrix with fewer rows than processes — a scalar head (1, H):
    its dim-0 shards would be empty on all processes but one, which would hold all of it; dim 1 then."""
    from torch.distributed.tensor import Shard

    if param.ndim >= 2 and param.shape[0] < num_processes <= param.shape[1]:
        return Shard(1)
    return None


def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Global L2 norm of the (sharded) gradients before clipping; scales them to ``max_norm`` when above.

    Each process sums the squares of its shards; one all-reduce gives the whole model's — the same number
    ``torch.nn.utils.clip_grad_norm_`` computes on unsharded gradients (non-finite stays non-finite)."""
    import torch.distributed as dist

    grads = [local(p.grad) for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        total += g.detach().double().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    norm = float(total.sqrt())
    if math.isfinite(norm) and norm > max_norm:
        factor = max_norm / (norm + 1e-6)
        for g in grads:
            g.detach().mul_(factor)
    return norm


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain CPU tensors, on every process (a collective: all must call)."""
    out = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[name] = full.detach().cpu()
    return out


def gathered_model(model: torch.nn.Module, skeleton: torch.nn.Module) -> torch.nn.Module:
    """A plain (unsharded) module with the trained weights of the sharded ``model``, built from its
    :func:`meta_skeleton` on the CPU of every process — what the stages save and evaluate after training.
    A collective: every process must call it. Tied weights (``tie_weights``) are tied again."""
    state = full_state_dict(model)
    skeleton.load_state_dict(state, assign=True)
    for module in skeleton.modules():
        if hasattr(module, "tie_weights") and module is skeleton:
            module.tie_weights()
    return skeleton


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Hold every FSDP2 unit of ``model`` whole for a block: no collective inside it, so each process may run
    forwards of its own number and length (sampling until its own rows end, a check on the main process
    only). Every process must enter and leave it together. Costs the whole model's weights per process while
    it lasts; a no-op for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(_reshard_after_forward(), recurse=False)
