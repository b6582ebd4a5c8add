"""Seeds and RNG state (with :mod:`rlhfkit.data.order`, the data order): what makes a run reproducible and exactly resumable.

One ``seed`` feeds four independent streams, each derived by hashing ``(seed, stream name, …)`` so that
changing how much one stream is consumed never shifts another:

============  ====================================  ==================================================
stream        derived from                          used for
============  ====================================  ==================================================
``python``    ``(seed, "python", rank)``            ``random`` (stage code, e.g. augmentation)
``numpy``     ``(seed, "numpy", rank)`` (32 bits)   ``numpy.random`` global state
``torch``     ``(seed, "torch", rank)``             ``torch.manual_seed`` — dropout, sampling (all devices)
``data``      ``(seed, "data", epoch)``             the permutation of the dataset in each epoch
============  ====================================  ==================================================

The first three differ per process (so dropout masks differ across ranks); the data stream does not (every
rank must agree on the global batch). The data order owns no global state at all: the permutation of epoch
``e`` is a pure function of ``(seed, e, dataset size)``, so resuming needs only ``(epoch, position)``; it
lives in :mod:`rlhfkit.data.order`, below the data package that needs it.

Imports only torch, numpy and the standard library.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from rlhfkit.data.order import derive_seed


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device) for ``rank``.

    Call it before building a model whose initialisation must be reproducible (a fresh reward head);
    the training loop calls it again when a fresh run starts, so training randomness does not depend on
    how much randomness model building consumed.
    """
    random.seed(derive_seed(seed, "python", rank))
    np.random.seed(derive_seed(seed, "numpy", rank, bits=32))
    torch.manual_seed(derive_seed(seed, "torch", rank))  # also seeds every CUDA device


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU and CUDA) as plain data loadable with weights_only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # The key array becomes a list so that torch.load(weights_only=True) accepts the file.
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate wants tuples; a round trip through some serialisers yields lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
