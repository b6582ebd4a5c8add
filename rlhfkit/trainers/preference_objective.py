"""The objective of the preference trainer: a loss from ``rlhfkit.preference_losses`` picked by name, applied to the
log-probs of one batch. Pure: log-probs in, per-example losses and metrics out (no model, no data).

A batch from :class:`~rlhfkit.trainers.preference_data.PreferenceCollator` holds N rows; ``chosen_index`` and
``rejected_index`` (B,) pick each example's two rows:

* pair losses (dpo, ipo, cdpo, rpo, orpo, simpo): pair i's chosen and rejected response;
* KTO: example i's labelled completion, and the completion of *another* prompt under example i's prompt —
  the mismatched pair whose log-ratio estimates KL(π_θ ‖ π_ref) for the reference point z₀
  (Ethayarajh et al. 2024, § 4.1); ``desirable`` (B,) holds the labels.

Reference-free losses (ORPO, SimPO) get ``ref_logps = None``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.preference_losses import (
    UNPAIRED_LOSSES,
    KTOLossOutput,
    PreferenceLossOutput,
    get_preference_loss,
    kto_reference_point,
)


@dataclass(frozen=True)
class PreferenceObjective:
    """A pair loss picked by name, with β and its options."""

    name: str
    beta: float
    options: dict[str, float] = field(default_factory=dict)

    def __call__(self, policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, lengths: torch.Tensor,
                 batch: dict[str, Any]) -> PreferenceLossOutput:
        """``policy_logps``, ``ref_logps`` (None for a reference-free loss), ``lengths`` (N,) over the batch
        rows. Returns the loss's (B,) outputs."""
        chosen, rejected = batch["chosen_index"], batch["rejected_index"]  # (B,)
        loss_fn = get_preference_loss(self.name)
        accepted = inspect.signature(loss_fn).parameters
        inputs = {"policy_chosen_logps": policy_logps[chosen], "policy_rejected_logps": policy_logps[rejected],
                  "chosen_lengths": lengths[chosen], "rejected_lengths": lengths[rejected]}
        if ref_logps is not None:
            inputs.update(ref_chosen_logps=ref_logps[chosen], ref_rejected_logps=ref_logps[rejected])
        missing = [k for k in accepted if k.startswith("ref_") and k not in inputs]
        if missing:
            raise ValueError(f"loss {self.name!r} needs reference log-probs and the batch has none")
        # IPO averages per token and RPO's NLL is per token: lengths go only to the losses that take them
        kwargs = {k: v for k, v in inputs.items() if k in accepted}
        return loss_fn(**kwargs, beta=self.beta, **self.options)

    def metrics(self, out: PreferenceLossOutput, policy_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Means over the B pairs (0-d tensors), named as in docs/metrics.md (DPO)."""
        index_c, index_r = batch["chosen_index"], batch["rejected_index"]
        policy_logps = policy_logps.detach()
        chosen, rejected = policy_logps[index_c], policy_logps[index_r]
        metrics = {
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
            "rewards/accuracies": out.reward_accuracies.mean(),
            "logps/chosen": chosen.mean(),
            "logps/rejected": rejected.mean(),
        }
        if ref_logps is not None:
            ref_logps = ref_logps.detach()
            metrics["logps/chosen_minus_ref"] = (chosen - ref_logps[index_c]).mean()
            metrics["logps/rejected_minus_ref"] = (rejected - ref_logps[index_r]).mean()
        metrics.update({f"{self.name}/{k}": v.mean() for k, v in out.extras.items()})
        return metrics


@dataclass(frozen=True)
class KTOObjective:
    """KTO (``rlhfkit.preference_losses.kto_loss``) on a batch of unpaired examples with their mismatched KL rows."""

    beta: float
    options: dict[str, float] = field(default_factory=dict)
    name: str = "kto"

    def __call__(self, policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, lengths: torch.Tensor,
                 batch: dict[str, Any]) -> KTOLossOutput:
        if ref_logps is None:
            raise ValueError("loss 'kto' needs reference log-probs and the batch has none")
        examples, mismatched = batch["chosen_index"], batch["rejected_index"]  # (B,) each
        # z₀ of this micro-batch (TRL likewise estimates it per batch); no gradient flows through it
        kl = kto_reference_point(policy_logps[mismatched], ref_logps[mismatched])
        return UNPAIRED_LOSSES[self.name](policy_logps[examples], ref_logps[examples], batch["desirable"], kl,
                                          beta=self.beta, **self.options)

    def metrics(self, out: KTOLossOutput, policy_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``kto/kl`` (z₀), ``kto/desirable_fraction``; ``rewards/chosen`` and ``logps/chosen`` over the
        desirable examples, ``…/rejected`` over the undesirable ones — each only when the micro-batch has
        some (so under accumulation their step value is weighted by the micro-batches that hold that label)."""
        good = out.desirable
        logps = policy_logps.detach()[batch["chosen_index"]]
        metrics = {"kto/kl": out.kl, "kto/desirable_fraction": good.to(out.losses.dtype).mean()}
        for name, mask in (("chosen", good), ("rejected", ~good)):
            if bool(mask.any()):
                metrics[f"rewards/{name}"] = out.rewards[mask].mean()
                metrics[f"logps/{name}"] = logps[mask].mean()
        return metrics


def objective_for(loss: str, beta: float, options: dict[str, float]):
    """The objective of ``loss``: :class:`KTOObjective` for the unpaired losses, else :class:`PreferenceObjective`."""
    if loss in UNPAIRED_LOSSES:
        return KTOObjective(beta, options, loss)
    return PreferenceObjective(loss, beta, options)
