"""The online trainer's choice of advantage estimator and policy loss (``advantage:`` in a PPO/GRPO recipe).

``estimator: gae`` is PPO (a critic, GAE, PPO's symmetric clip and token mean — the ``ppo:`` section).
The critic-free estimators (``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``; :mod:`rlhfkit.advantages`)
load no value model; the group ones sample ``rollout.n`` responses per prompt. For them::

    advantage:
      estimator: grpo               # grpo | dr_grpo | rloo | reinforce_pp | gae
      loss_aggregation: token_mean  # token_mean (DAPO, Dr. GRPO) | sequence_mean (original GRPO)
      clip_range_low: 0.2           # ε_low; null = ppo.clip_range
      clip_range_high: 0.28         # ε_high (DAPO clip-higher); null = ppo.clip_range
      filter_zero_std_groups: false # drop the groups whose n scores are all equal from the update (DAPO)
    kl: {penalty: loss, init_coef: 0.04}   # GRPO's k3 loss term; penalty: reward = PPO's; init_coef 0 = no π_ref
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import ConfigError

ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")  # as rlhfkit.advantages.GROUP_ESTIMATORS (this module loads no torch)


@dataclass
class AdvantageConfig:
    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = "gae"
    """``gae``: PPO with a critic. ``grpo``: (R − group mean) / group std (Shao et al. 2024). ``dr_grpo``: no std
    division (Liu et al. 2025). ``rloo``: R − mean of the other responses to the prompt (Ahmadian et al. 2024).
    ``reinforce_pp``: batch-whitened returns with the KL penalty in the rewards (Hu 2025). All but ``gae`` load
    no value model; ``grpo``, ``dr_grpo`` and ``rloo`` need ``rollout.n`` >= 2."""
    loss_aggregation: Literal["token_mean", "sequence_mean"] = "token_mean"
    """Critic-free only. ``token_mean``: every response token of the minibatch weighs the same (DAPO, Dr. GRPO).
    ``sequence_mean``: each response's tokens are averaged, then the responses (DeepSeekMath Eq. 3)."""
    clip_range_low: float | None = None
    """Critic-free only: ε_low, the ratio's lower clip is 1 − ε_low; null = ``ppo.clip_range``."""
    clip_range_high: float | None = None
    """Critic-free only: ε_high, the ratio's upper clip is 1 + ε_high (DAPO "clip-higher": 0.28); null =
    ``ppo.clip_range``."""
    filter_zero_std_groups: bool = False
    """Group estimators only (grpo, dr_grpo, rloo): the rows of every prompt whose ``rollout.n`` scores are all
    equal (within 1e-6) are dropped from the update — no policy loss, no KL loss term, not counted in the
    token or response count the loss is divided by (DAPO's dynamic-sampling filter, Yu et al. 2025 §3.2,
    without its resampling: the step learns from fewer rows). Their advantage is 0 anyway; kept, they dilute
    the mean and still pull towards π_ref through the KL term."""

    @property
    def critic_free(self) -> bool:
        return self.estimator != "gae"

    def validate(self) -> None:
        for key in ("clip_range_low", "clip_range_high"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"advantage.{key} must be > 0 or null (= ppo.clip_range), got {value}")
        if self.filter_zero_std_groups and self.estimator not in GROUP_ESTIMATORS:
            raise ConfigError(f"advantage.filter_zero_std_groups is for the group estimators "
                              f"({', '.join(GROUP_ESTIMATORS)}), whose all-equal groups carry no signal; "
                              f"advantage.estimator={self.estimator} has no groups to filter")
        if self.clip_range_low is not None and self.clip_range_low >= 1:
            raise ConfigError(f"advantage.clip_range_low must be below 1, got {self.clip_range_low}")
