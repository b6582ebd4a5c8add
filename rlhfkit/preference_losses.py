"""The direct preference losses, as pure functions of tensors, named as in the papers: DPO and its family
(IPO, cDPO, RPO, SimPO, ORPO) on preference pairs, KTO on unpaired labels — each picked by name from
:data:`PREFERENCE_LOSSES` / :data:`UNPAIRED_LOSSES` by the one preference trainer (STYLE.md item 14).

Each function states its equation, the shapes and the reduction; it returns per-pair (or per-example)
losses plus the implicit rewards and leaves the mean over the batch to the caller. Inputs are summed
log-probabilities of whole responses, (B,). The reward model's Bradley–Terry loss, SFT and the online RL
losses are in :mod:`rlhfkit.losses`. Imports only torch, the standard library and :mod:`rlhfkit.ops`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rlhfkit.ops import check_same_shape


@dataclass(frozen=True)
class PreferenceLossOutput:
    """Output of a direct preference loss. All (B,) for B pairs.

    ``losses``: per pair, to be averaged by the caller. ``chosen_rewards`` / ``rejected_rewards``:
    the implicit rewards ``β·(log π_θ(y|x) − log π_ref(y|x))`` of the log-probabilities the loss
    used, detached. ``extras``: variant-specific per-pair diagnostics (e.g. RPO's ``nll``).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def reward_accuracies(self) -> torch.Tensor:
        """1 where the chosen response has the larger implicit reward, else 0. (B,)."""
        return (self.chosen_rewards > self.rejected_rewards).to(self.losses.dtype)


def _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLossOutput:
    """Direct Preference Optimization (Rafailov et al. 2023, Eq. 7).

    ``h = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]``,
    ``loss = −log σ(β·h)``. Log-probabilities are *summed* over the response tokens, (B,) each
    (see :func:`rlhfkit.ops.sequence_logprobs`). Reduction: mean over pairs.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PreferenceLossOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def cdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.1,
) -> PreferenceLossOutput:
    """Conservative DPO, DPO with label smoothing (Mitchell 2023, "A note on DPO with noisy
    preferences & relationship to IPO").

    With ε = ``label_smoothing``, the probability that a label is flipped:
    ``loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)``, h as in :func:`dpo_loss`; ε = 0 is DPO.
    Its minimum is at a finite ``β·h = log((1 − ε)/ε)``, so the margin stops growing. This is *not*
    the unbiased robust DPO (rDPO) of Chowdhury et al. 2024, which divides a difference of the two
    terms by 1 − 2ε. Summed log-probabilities, (B,). Reduction: mean over pairs.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLossOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """Identity Preference Optimisation (Azar et al. 2023, Eq. 17), with ``beta`` as τ.

    ``loss = (h − 1/(2τ))²``, h as in :func:`dpo_loss` but on per-token *average* log-probabilities,
    as the IPO paper and its reference implementations use. Pass either averaged log-probabilities
    and no lengths, or summed log-probabilities with ``chosen_lengths`` / ``rejected_lengths`` (B,)
    response token counts, and they are divided here (policy and reference alike). The rewards
    reported are β times the log-ratios the loss used. Reduction: mean over pairs.
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss needs both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        chosen_n = chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
        rejected_n = rejected_lengths.clamp(min=1).to(policy_rejected_logps.dtype)
        policy_chosen_logps, ref_chosen_logps = policy_chosen_logps / chosen_n, ref_chosen_logps / chosen_n
        policy_rejected_logps = policy_rejected_logps / rejected_n
        ref_rejected_logps = ref_rejected_logps / rejected_n
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def rpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor,
    alpha: float = 1.0,
) -> PreferenceLossOutput:
    """DPO plus the length-normalised NLL of the chosen response.

    ``loss = −log σ(β·h) + α·(−log π_θ(y_w|x) / |y_w|)``, h as in :func:`dpo_loss` on *summed*
    log-probabilities, ``chosen_lengths`` (B,) the response token counts |y_w|. The NLL term is that
    of Pang et al. 2024 ("Iterative Reasoning Preference Optimization", Eq. 1); Liu et al. 2024
    ("Provably mitigating overoptimization in RLHF") call the combination RPO. It keeps the chosen
    responses' likelihood from falling (WORLD_NOTES item 6); α = 0 is DPO.
    ``extras``: ``nll`` (B,), the per-token NLL of the chosen response, and ``dpo_losses`` (B,).
    Reduction: mean over pairs.
    """
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    check_same_shape(policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
    return PreferenceLossOutput(
        dpo.losses + alpha * nll,
        dpo.chosen_rewards,
        dpo.rejected_rewards,
        extras={"nll": nll.detach(), "dpo_losses": dpo.losses.detach()},
    )


def _per_token(logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities (B,) divided by the response token counts (B,): the per-token average."""
    check_same_shape(logps=logps, lengths=lengths)
    return logps / lengths.clamp(min=1).to(logps.dtype)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    gamma: float = 0.5,
) -> PreferenceLossOutput:
    """Simple Preference Optimization (Meng et al. 2024, "SimPO", Eq. 6): no reference model.

    ``loss = −log σ(β/|y_w|·log π_θ(y_w|x) − β/|y_l|·log π_θ(y_l|x) − γ)``: the implicit reward is
    the length-normalised log-likelihood ``β/|y|·log π_θ(y|x)`` (Eq. 4), and γ > 0 is a target reward
    margin. Summed log-probabilities and response token counts, (B,) each. The rewards reported are
    those implicit rewards. Reduction: mean over pairs. The paper's β is ~2–2.5 and γ/β ~0.5 (§ 4).
    """
    chosen_rewards = beta * _per_token(policy_chosen_logps, chosen_lengths)
    rejected_rewards = beta * _per_token(policy_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PreferenceLossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> PreferenceLossOutput:
    """Odds Ratio Preference Optimization (Hong et al. 2024, "ORPO", Eqs. 2–7): no reference model,
    no separate SFT stage; ``beta`` is the paper's λ.

    With ``P(y|x) = exp(log π_θ(y|x)/|y|)`` (the per-token average, Eq. 2) and
    ``odds(y|x) = P/(1 − P)`` (Eq. 4), ``L_OR = −log σ(log odds(y_w|x) − log odds(y_l|x))`` (Eq. 7) and
    ``loss = L_SFT + λ·L_OR`` (Eq. 6), ``L_SFT = −log π_θ(y_w|x)/|y_w|`` the per-token NLL of the chosen
    response. ``log odds = a − log(1 − eᵃ)`` with ``a`` the average log-prob (< 0), computed as
    ``a − log(−expm1(a))``, finite for a < 0. Summed log-probabilities and token counts, (B,) each.
    The rewards reported are ``λ·a`` (as TRL's ORPO reports); ``extras``: ``nll`` (B,),
    ``log_odds_ratio`` (B,). Reduction: mean over pairs.
    """
    chosen_avg = _per_token(policy_chosen_logps, chosen_lengths)
    rejected_avg = _per_token(policy_rejected_logps, rejected_lengths)
    # a = 0 (probability 1) has infinite odds; the clamp keeps one token of float32 room below it.
    tiny = torch.finfo(chosen_avg.dtype).eps

    def log_odds(avg: torch.Tensor) -> torch.Tensor:
        avg = avg.clamp(max=-tiny)
        return avg - torch.log(-torch.expm1(avg))

    log_odds_ratio = log_odds(chosen_avg) - log_odds(rejected_avg)
    nll = -chosen_avg
    losses = nll - beta * F.logsigmoid(log_odds_ratio)
    return PreferenceLossOutput(
        losses,
        beta * chosen_avg.detach(),
        beta * rejected_avg.detach(),
        extras={"nll": nll.detach(), "log_odds_ratio": log_odds_ratio.detach()},
    )


@dataclass(frozen=True)
class KTOLossOutput:
    """Output of :func:`kto_loss`. ``losses`` (B,) per labelled example; ``rewards`` (B,) the implicit
    rewards ``β·(log π_θ(y|x) − log π_ref(y|x))``, detached; ``kl`` 0-d, the reference point z₀ used
    (detached, ≥ 0); ``desirable`` (B,) bool, the labels."""

    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    desirable: torch.Tensor


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z₀ (Ethayarajh et al. 2024, § 4.1): the batch estimate of
    KL(π_θ ‖ π_ref) = mean_j [log π_θ(y'_j|x_j) − log π_ref(y'_j|x_j)], on *mismatched* pairs (x_j, y'_j)
    — a completion of another prompt, so the estimate does not follow what the labels reward — clipped at
    0 and detached (no gradient flows through z₀). (M,), (M,) -> 0-d. ``β·z₀`` is the paper's z_ref.
    """
    check_same_shape(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLossOutput:
    """Kahneman–Tversky Optimization (Ethayarajh et al. 2024, "KTO", Eq. 8), from unpaired labels.

    With ``r = log π_θ(y|x) − log π_ref(y|x)`` (summed over the response, (B,)) and the reference point
    ``z₀ = kl`` (a 0-d tensor from :func:`kto_reference_point`, treated as a constant):

    * desirable y:   ``loss = λ_D·(1 − σ(β·(r − z₀)))``
    * undesirable y: ``loss = λ_U·(1 − σ(β·(z₀ − r)))``

    i.e. ``λ_y − v(x, y)`` of Eq. 8. ``desirable`` (B,) bool. The paper advises
    ``λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]`` when the classes are unbalanced (§ 4.2). Reduction: mean over
    the B examples (both kinds together, as TRL's KTO does).
    """
    check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if kl.dim() != 0:
        raise ValueError(f"kl must be a 0-d tensor (the batch's reference point), got shape {tuple(kl.shape)}")
    desirable = desirable.bool()
    logratios = policy_logps - ref_logps
    z0 = kl.detach().to(logratios.dtype)
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z0)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return KTOLossOutput(losses, beta * logratios.detach(), z0, desirable)


PreferenceLoss = Callable[..., PreferenceLossOutput]

PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "cdpo": cdpo_loss,
    "rpo": rpo_loss,
    "orpo": orpo_loss,
    "simpo": simpo_loss,
}

# Losses that need no π_ref: no reference model is loaded or precomputed for them.
REFERENCE_FREE_LOSSES = frozenset({"orpo", "simpo"})
# Losses on unpaired rows {"prompt", "completion", "label"}: not in PREFERENCE_LOSSES (other inputs).
UNPAIRED_LOSSES: dict[str, Callable[..., KTOLossOutput]] = {"kto": kto_loss}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The preference loss called ``name``; an unknown name raises ``ValueError`` listing the valid."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(PREFERENCE_LOSSES))
        raise ValueError(f"unknown preference loss {name!r}; valid names: {valid}") from None
