"""The optimizer-step mechanics of :class:`rlhfkit.engine.loop.TrainLoop`: gradient accumulation across
processes, and the clipped AdamW step guarded against non-finite losses and gradient norms.

:class:`GuardedUpdates` is a base class of ``TrainLoop``, not used alone: its methods read the loop's state
(``config``, ``model``, ``accelerator``, ``optimizer``, ``metrics``, the current step and its counters), set up
by ``TrainLoop.__init__`` and ``loop_resume.ResumableRun._setup``. It is its own module so that what decides
whether an update happens can be read in one place.
"""

from __future__ import annotations

import contextlib
import math

import torch

from rlhfkit.engine import fsdp
from rlhfkit.engine.loop_support import nonfinite_message
from rlhfkit.engine.loop_types import NonFiniteError, UpdateResult
from rlhfkit.engine.metrics_log import say

__all__ = ["GuardedUpdates"]


class GuardedUpdates:
    """Accumulate gradients (``no_sync``, ``backward``) and take guarded optimizer steps (``optimizer_step``)."""

    @contextlib.contextmanager
    def no_sync(self, enabled: bool = True):
        """Skip the gradient all-reduce for micro-batches before the last one (wrap forward and backward)."""
        if enabled and self.num_processes > 1 and self.sharded:
            self.model.set_requires_gradient_sync(False)  # FSDP2 keeps the unreduced gradients until the last
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        elif enabled and self.num_processes > 1:
            with self.accelerator.no_sync(self.model):
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor, *, scale: float = 1.0) -> None:
        """Accumulate the gradients of ``loss × scale``; a non-finite loss is remembered for the guard."""
        if self._current is None:
            raise RuntimeError("backward() outside a step")
        if self._nonfinite_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._nonfinite_loss = float(loss.detach().float().sum())
        self.accelerator.backward(loss * scale if scale != 1.0 else loss)

    def optimizer_step(self) -> UpdateResult:
        """Clip and take one AdamW step — unless the loss or gradient norm is non-finite on any process:
        then no step is taken, the gradients are zeroed, and ``nonfinite`` decides (stop, or skip and count).
        """
        if self._current is None:
            raise RuntimeError("optimizer_step() outside a step")
        max_norm = self.config.max_grad_norm or math.inf
        if self.sharded:
            grad_norm = fsdp.clip_grad_norm_(self._trainable, max_norm)
        else:
            grad_norm = float(self.accelerator.clip_grad_norm_(self._trainable, max_norm))
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss_value, self._nonfinite_loss = self._nonfinite_loss, None
        bad = loss_value is not None or not math.isfinite(grad_norm)
        if self.num_processes > 1:  # every process must take the same decision
            bad = self._sum_over_processes([float(bad)])[0] > 0
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if loss_value is not None:
                self._on_nonfinite("loss", loss_value)
            else:
                self._on_nonfinite("gradient norm", grad_norm)
            return UpdateResult(grad_norm, True, lr)
        self._updates_in_step += 1  # from here on, an out-of-memory error leaves no intact state to save
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips = 0
        self._grad_norm = grad_norm
        return UpdateResult(grad_norm, False, lr)

    def stop_nonfinite(self, what: str) -> None:
        """Stop the run on non-finite values met outside a loss (e.g. a rollout sampled from diverged weights):
        a :class:`NonFiniteError` naming the step and the latest checkpoint; no update is made from them."""
        step = self._current
        number = step.number if step is not None else self.step + 1
        last = self.last_checkpoint.name if self.last_checkpoint else "none yet"
        self.metrics.event("nonfinite", number, kind="values", action="stop")
        raise NonFiniteError(
            f"non-finite values at step {number} ({what}): no update was made from them and no checkpoint "
            f"written after them (latest checkpoint: {last}). The weights have likely diverged: lower lr "
            f"(now {self.config.lr:g}) or max_grad_norm, or use mixed_precision=no.")

    def _on_nonfinite(self, kind: str, value: float) -> None:
        step = self._current
        where = f"step {step.number} (epoch {step.epoch}, dataset indices {_preview(step.indices)})"
        last = self.last_checkpoint.name if self.last_checkpoint else "none yet"
        if self.config.nonfinite == "skip":
            self.skipped_total += 1
            self._skips_in_step += 1
            self.consecutive_skips += 1
            say(f"non-finite {kind} ({value}) at {where}: optimizer step skipped "
                f"({self.consecutive_skips} in a row, {self.skipped_total} in total)")
        if self.config.nonfinite == "stop" or self.consecutive_skips >= self.config.max_consecutive_skips:
            self.metrics.event("nonfinite", step.number, kind=kind, action="stop")
            raise NonFiniteError(nonfinite_message(self.config, kind, value, where, last,
                                                   self.consecutive_skips))

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        """Each value summed over all processes (one float64 all-reduce)."""
        if self.num_processes == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()


def _preview(shards: list[list[int]], limit: int = 8) -> str:
    indices = [i for shard in shards for i in shard]
    shown = ", ".join(map(str, indices[:limit]))
    return f"[{shown}{', …' if len(indices) > limit else ''}]"
