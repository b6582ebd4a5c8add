"""rlhfkit.preference_losses against independent computations: DPO, IPO, cDPO and RPO on hand-worked pairs
and limits; KTO, ORPO and SimPO against the papers' formulas on Python floats, their limits and gradient
signs."""

import inspect
import math

import pytest
import torch

from rlhfkit.preference_losses import (
    PREFERENCE_LOSSES,
    cdpo_loss,
    dpo_loss,
    get_preference_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    rpo_loss,
    simpo_loss,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


CHOSEN = [-6.0, -3.5, -12.0]  # summed log π_θ(y|x)
REJECTED = [-7.0, -2.0, -9.0]
CHOSEN_N = [4, 2, 8]
REJECTED_N = [5, 1, 3]


def tensors(*lists, dtype=torch.float64):
    return [torch.tensor(x, dtype=dtype) for x in lists]


# ----------------------------------------------------------------------------- SimPO


def test_simpo_equals_the_paper_formula_per_pair():
    beta, gamma = 2.0, 0.7
    out = simpo_loss(*tensors(CHOSEN, REJECTED), beta=beta,
                     chosen_lengths=torch.tensor(CHOSEN_N), rejected_lengths=torch.tensor(REJECTED_N), gamma=gamma)
    for i in range(3):
        margin = beta * CHOSEN[i] / CHOSEN_N[i] - beta * REJECTED[i] / REJECTED_N[i] - gamma
        assert out.losses[i].item() == pytest.approx(-log_sigmoid(margin), rel=1e-12)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * CHOSEN[i] / CHOSEN_N[i])


def test_simpo_without_margin_is_dpo_with_a_zero_reference_at_beta_over_length():
    """γ = 0, |y_w| = |y_l| = L: SimPO is DPO with log π_ref ≡ 0 and β/L."""
    chosen, rejected = tensors(CHOSEN, REJECTED)
    length = torch.full((3,), 5)
    simpo = simpo_loss(chosen, rejected, beta=1.5, chosen_lengths=length, rejected_lengths=length, gamma=0.0)
    zero = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(simpo.losses, dpo_loss(chosen, rejected, zero, zero, beta=1.5 / 5).losses)


def test_simpo_margin_raises_the_loss_and_lengths_normalise():
    chosen, rejected = tensors([-10.0], [-10.0])
    one, ten = torch.tensor([1]), torch.tensor([10])
    assert simpo_loss(chosen, rejected, 2.0, ten, ten, gamma=1.0).losses.item() > \
        simpo_loss(chosen, rejected, 2.0, ten, ten, gamma=0.0).losses.item() == pytest.approx(math.log(2))
    # the same sum over 10 tokens is a better per-token likelihood than over 1: the 10-token one wins
    assert simpo_loss(chosen, rejected, 2.0, ten, one, gamma=0.0).losses.item() < math.log(2)


# ----------------------------------------------------------------------------- ORPO


def orpo_by_hand(chosen, rejected, n_c, n_r, lam):
    p_w, p_l = math.exp(chosen / n_c), math.exp(rejected / n_r)
    odds_ratio = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
    return -chosen / n_c - lam * log_sigmoid(math.log(odds_ratio)), math.log(odds_ratio)


def test_orpo_equals_the_paper_formula_per_pair():
    out = orpo_loss(*tensors(CHOSEN, REJECTED), beta=0.25,
                    chosen_lengths=torch.tensor(CHOSEN_N), rejected_lengths=torch.tensor(REJECTED_N))
    for i in range(3):
        loss, log_or = orpo_by_hand(CHOSEN[i], REJECTED[i], CHOSEN_N[i], REJECTED_N[i], 0.25)
        assert out.losses[i].item() == pytest.approx(loss, rel=1e-10)
        assert out.extras["log_odds_ratio"][i].item() == pytest.approx(log_or, rel=1e-10)
        assert out.extras["nll"][i].item() == pytest.approx(-CHOSEN[i] / CHOSEN_N[i])


def test_orpo_with_lambda_zero_is_the_per_token_nll_of_the_chosen():
    chosen, rejected = tensors(CHOSEN, REJECTED)
    out = orpo_loss(chosen, rejected, 0.0, torch.tensor(CHOSEN_N), torch.tensor(REJECTED_N))
    torch.testing.assert_close(out.losses, -chosen / torch.tensor(CHOSEN_N, dtype=torch.float64))


def test_orpo_is_finite_with_gradients_near_probability_one_in_float32():
    chosen = torch.tensor([-1e-9, -3.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -1e-9], requires_grad=True)
    out = orpo_loss(chosen, rejected, 0.1, torch.tensor([3, 3]), torch.tensor([3, 3]))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


# ----------------------------------------------------------------------------- KTO


def kto_by_hand(policy, ref, labels, kl_policy, kl_ref, beta, lam_d, lam_u):
    z0 = max(0.0, sum(p - r for p, r in zip(kl_policy, kl_ref, strict=True)) / len(kl_policy))
    losses = []
    for p, r, good in zip(policy, ref, labels, strict=True):
        reward = p - r
        losses.append(lam_d * (1 - sigmoid(beta * (reward - z0))) if good
                      else lam_u * (1 - sigmoid(beta * (z0 - reward))))
    return losses, z0


POLICY = [-5.0, -8.0, -3.0, -9.5]
REF = [-6.0, -7.0, -3.5, -8.0]
LABELS = [True, False, True, False]
KL_POLICY = [-10.0, -7.0, -4.0, -9.0]
KL_REF = [-11.0, -7.5, -4.2, -8.0]


def test_kto_equals_the_paper_formula_per_example():
    z0 = kto_reference_point(*tensors(KL_POLICY, KL_REF))
    out = kto_loss(*tensors(POLICY, REF), torch.tensor(LABELS), z0, beta=0.5,
                   desirable_weight=1.0, undesirable_weight=1.33)
    expected, z0_by_hand = kto_by_hand(POLICY, REF, LABELS, KL_POLICY, KL_REF, 0.5, 1.0, 1.33)
    assert z0.item() == pytest.approx(z0_by_hand) and z0_by_hand > 0
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.5 * (p - r) for p, r in zip(POLICY, REF, strict=True)])


def test_kto_reference_point_is_clipped_at_zero_and_carries_no_gradient():
    policy_kl = torch.tensor([-5.0, -6.0], requires_grad=True)
    z0 = kto_reference_point(policy_kl, torch.tensor([-4.0, -4.0]))  # mean −1.5 < 0
    assert z0.item() == 0.0 and not z0.requires_grad


def test_kto_at_the_reference_point_each_example_costs_half_its_weight():
    out = kto_loss(*tensors([-3.0, -3.0], [-4.0, -4.0]), torch.tensor([True, False]), torch.tensor(1.0),
                   beta=0.3, desirable_weight=2.0, undesirable_weight=0.5)
    assert out.losses.tolist() == pytest.approx([1.0, 0.25])


def test_kto_gradient_raises_desirable_and_lowers_undesirable_likelihood():
    policy = torch.tensor([-5.0, -5.0], requires_grad=True)
    kl = torch.tensor(0.4, requires_grad=True)
    out = kto_loss(policy, torch.tensor([-5.0, -5.0]), torch.tensor([True, False]), kl, beta=0.1)
    out.losses.sum().backward()
    assert policy.grad[0].item() < 0 < policy.grad[1].item()
    assert kl.grad is None  # z₀ is a constant of the loss
    with pytest.raises(ValueError, match="0-d"):
        kto_loss(policy, policy.detach(), torch.tensor([True, False]), torch.zeros(2), beta=0.1)


def softplus(x):
    """−log σ(x) = log(1 + e^{−x}), the reference for every logistic loss below."""
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- DPO family

# Two pairs: log-ratios chosen [1, 0], rejected [−1, 2], so h = [2, −2].
POLICY_CHOSEN = torch.tensor([-10.0, -5.0])
POLICY_REJECTED = torch.tensor([-12.0, -4.0])
REF_CHOSEN = torch.tensor([-11.0, -5.0])
REF_REJECTED = torch.tensor([-11.0, -6.0])
PAIRS = (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)


def test_dpo_hand_worked():
    out = dpo_loss(*PAIRS, beta=0.1)
    assert out.losses.tolist() == pytest.approx([softplus(0.2), softplus(-0.2)], rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.2])
    assert out.reward_accuracies.tolist() == [1.0, 0.0]


def test_ipo_hand_worked_on_averaged_logps():
    out = ipo_loss(*PAIRS, beta=0.5)  # target margin 1/(2·0.5) = 1
    assert out.losses.tolist() == pytest.approx([(2 - 1) ** 2, (-2 - 1) ** 2])


def test_ipo_length_normalisation():
    chosen_lengths, rejected_lengths = torch.tensor([2, 1]), torch.tensor([1, 4])
    out = ipo_loss(*PAIRS, beta=0.5, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    # Averaged: chosen log-ratios [(−10+11)/2, 0] = [0.5, 0]; rejected [−1, (−4+6)/4] = [−1, 0.5];
    # h = [1.5, −0.5]; loss = (h − 1)².
    assert out.losses.tolist() == pytest.approx([0.25, 2.25])
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    with pytest.raises(ValueError, match="both"):
        ipo_loss(*PAIRS, beta=0.5, chosen_lengths=chosen_lengths)


def test_cdpo_hand_worked_and_zero_smoothing_is_dpo():
    out = cdpo_loss(*PAIRS, beta=0.1, label_smoothing=0.25)
    expected = [0.75 * softplus(0.2) + 0.25 * softplus(-0.2), 0.75 * softplus(-0.2) + 0.25 * softplus(0.2)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        cdpo_loss(*PAIRS, beta=0.1, label_smoothing=0.0).losses, dpo_loss(*PAIRS, beta=0.1).losses
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo_loss(*PAIRS, beta=0.1, label_smoothing=0.5)


def test_cdpo_minimum_at_finite_margin():
    """d loss / d(βh) = 0 at βh = log((1 − ε)/ε) (Mitchell 2023)."""
    eps, beta = 0.2, 0.5
    margin = math.log((1 - eps) / eps) / beta
    policy_chosen = torch.tensor([margin], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    cdpo_loss(policy_chosen, zero, zero, zero, beta=beta, label_smoothing=eps).losses.sum().backward()
    assert policy_chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_rpo_hand_worked_and_zero_alpha_is_dpo():
    chosen_lengths = torch.tensor([5, 2])
    out = rpo_loss(*PAIRS, beta=0.1, chosen_lengths=chosen_lengths, alpha=1.0)
    nll = [10.0 / 5, 5.0 / 2]
    assert out.losses.tolist() == pytest.approx([softplus(0.2) + nll[0], softplus(-0.2) + nll[1]], rel=1e-6)
    assert out.extras["nll"].tolist() == pytest.approx(nll)
    no_nll = rpo_loss(*PAIRS, beta=0.1, chosen_lengths=chosen_lengths, alpha=0.0)
    torch.testing.assert_close(no_nll.losses, dpo_loss(*PAIRS, beta=0.1).losses)


VARIANT_KWARGS = {
    "dpo": {},
    "cdpo": {"label_smoothing": 0.1},
    "ipo": {},
    "rpo": {"chosen_lengths": torch.tensor([3])},
    "orpo": {"chosen_lengths": torch.tensor([3]), "rejected_lengths": torch.tensor([3])},
    "simpo": {"chosen_lengths": torch.tensor([3]), "rejected_lengths": torch.tensor([3])},
}


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_preference_loss_gradient_sign(name):
    """Raising log π_θ(y_w) lowers the loss; raising log π_θ(y_l) raises it (at an even margin)."""
    policy_chosen = torch.tensor([-4.0], requires_grad=True)
    policy_rejected = torch.tensor([-4.0], requires_grad=True)
    ref = torch.tensor([-4.0])
    loss_fn = get_preference_loss(name)
    inputs = {"policy_chosen_logps": policy_chosen, "policy_rejected_logps": policy_rejected,
              "ref_chosen_logps": ref, "ref_rejected_logps": ref}
    accepted = inspect.signature(loss_fn).parameters  # ORPO and SimPO take no reference
    out = loss_fn(**{k: v for k, v in inputs.items() if k in accepted}, beta=0.1, **VARIANT_KWARGS[name])
    out.losses.sum().backward()
    assert policy_chosen.grad.item() < 0 < policy_rejected.grad.item()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_get_preference_loss_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="cdpo, dpo, ipo, orpo, rpo, simpo"):
        get_preference_loss("ppo")
    assert get_preference_loss("ipo") is ipo_loss


def test_preference_loss_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_loss(POLICY_CHOSEN, POLICY_REJECTED[:1], REF_CHOSEN, REF_REJECTED, beta=0.1)
