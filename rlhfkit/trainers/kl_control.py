"""KL coefficient controllers for PPO: the β in ``rewards = score − β·KL``.

Both share one tiny interface (STYLE.md item 9): ``.value`` is the current β,
``update(current_kl, n_steps)`` adapts it after a batch, and ``state_dict()`` /
``load_state_dict()`` carry it across a resume. Imports only the standard library.
"""

from __future__ import annotations

import math
from typing import Any, Protocol


def _as_float(current_kl: Any) -> float:
    # Accept a Python number or a 0-d tensor without importing torch here.
    kl = float(current_kl.item() if hasattr(current_kl, "item") else current_kl)
    if not math.isfinite(kl):
        raise ValueError(f"KL controller got a non-finite KL ({kl}); refusing to update the coefficient")
    return kl


class KLController(Protocol):
    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    kind = "fixed"

    def __init__(self, kl_coef: float) -> None:
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Ignore the measured KL (validated only, so a nan KL still fails loudly)."""
        _as_float(current_kl)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target`` (Ziegler et al. 2019, §2.2).

    After a batch of ``n_steps`` samples (episodes) with mean KL ``current_kl`` (nats per sequence):
    ``e = clip(current_kl / target − 1, −0.2, 0.2)`` and ``β ← β·(1 + e·n_steps / horizon)``, as in
    lm-human-preferences' ``AdaptiveKLController``. ``horizon`` is in samples: the error decays with
    time constant about ``horizon`` samples.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if not init_kl_coef > 0:
            raise ValueError(f"init_kl_coef must be > 0 for the adaptive controller, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(_as_float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β. ``target`` and ``horizon`` come from the run's config, not the checkpoint."""
        _check_kind(state, self.kind)
        self.value = float(state["value"])


def _check_kind(state: dict[str, Any], expected: str) -> None:
    if state.get("kind") != expected:
        raise ValueError(
            f"KL controller state is for a {state.get('kind')!r} controller, but this run uses {expected!r}"
        )
