"""KL controllers against hand computation of Ziegler et al. 2019's update rule."""

import pytest
import torch

from rlhfkit.trainers.kl_control import AdaptiveKLController, FixedKLController


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0):
        controller.update(kl, n_steps=64)
    assert controller.value == 0.05


def test_adaptive_controller_hand_computed():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    # KL 9 is 50 % over target: error clipped to +0.2; β ← 0.2 · (1 + 0.2·256/10000).
    controller.update(9.0, n_steps=256)
    expected = 0.2 * (1 + 0.2 * 256 / 10_000)
    assert controller.value == pytest.approx(expected)
    # KL 3 is 50 % under target: error clipped to −0.2.
    controller.update(torch.tensor(3.0), n_steps=256)
    expected *= 1 - 0.2 * 256 / 10_000
    assert controller.value == pytest.approx(expected)
    # KL 6.6 is 10 % over: inside the clip, error 0.1.
    controller.update(6.6, n_steps=100)
    expected *= 1 + 0.1 * 100 / 10_000
    assert controller.value == pytest.approx(expected)
    # At target the coefficient stays.
    controller.update(6.0, n_steps=100)
    assert controller.value == pytest.approx(expected)


def test_adaptive_controller_state_round_trip_resumes_identically():
    uninterrupted = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    first = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    kls = [8.0, 5.0, 3.5, 1.0, 4.2]
    for kl in kls:
        uninterrupted.update(kl, n_steps=32)
    for kl in kls[:2]:
        first.update(kl, n_steps=32)
    resumed = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    resumed.load_state_dict(first.state_dict())
    for kl in kls[2:]:
        resumed.update(kl, n_steps=32)
    assert resumed.value == uninterrupted.value
    assert resumed.value != 0.1


def test_controller_state_of_wrong_kind_and_nonfinite_kl_fail_loudly():
    with pytest.raises(ValueError, match="'fixed'"):
        AdaptiveKLController(0.1, 4.0, 1000).load_state_dict(FixedKLController(0.1).state_dict())
    for controller in (AdaptiveKLController(0.1, 4.0, 1000), FixedKLController(0.1)):
        with pytest.raises(ValueError, match="non-finite"):
            controller.update(float("nan"), n_steps=1)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 1000)
    fixed = FixedKLController(0.3)
    fixed.load_state_dict({"kind": "fixed", "value": 0.7})
    assert fixed.value == 0.7
