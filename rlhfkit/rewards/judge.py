"""A local causal LM as a reward source: ``rewards: [{name: judge, judge: "lm:DIR", weight: 1.0}]``.

The judge is the one ``rlhfkit label --judge lm:DIR`` uses (:class:`rlhfkit.judges.lm_judge.LMJudge`), read
pointwise: each response is shown alone with :data:`~rlhfkit.judges.lm_judge.SCORE_QUESTION` ("Is this
response helpful, honest and harmless? Answer Yes or No."), nothing is generated, and the reward is

    r = σ(log π_J(" Yes" | q) − log π_J(" No" | q)) = π_J(Yes) / (π_J(Yes) + π_J(No)),

the judge's probability of the verdict "Yes", renormalised over the two answers it may give. Why this score:

- **pointwise, with nothing else to sample.** The judge's pairwise reading (``compare``, both orders, position
  bias cancelled) needs a second response; against a fixed reference (an SFT sample per prompt) it would cost
  one more generation per prompt and step and two forwards per comparison. The group estimators already
  compare a prompt's n responses with each other through their baseline, so a pointwise score suffices.
- **bounded in [0, 1].** A weight then means the same next to a 0/1 verifiable reward, and the policy cannot
  farm an unbounded log-odds: once the judge is sure, more "Yes" earns almost nothing.
- **the judge's biases.** A lean towards "Yes" that depends on the prompt alone moves all of a prompt's
  responses' log-odds by the same amount, so their order within the group (what GRPO/RLOO learn from) is
  kept; σ rescales their differences. A lean that depends on the response (length, style) is not cancelled:
  it is a bias of the judge the policy can exploit, as with any learned reward — watch it with an
  independent evaluation (``rlhfkit eval``).

The judge is frozen, in the policy's device and dtype; it reads the responses as text (so its tokenizer may
differ from the policy's) and the prompts as :func:`~rlhfkit.judges.lm_judge.render_text` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlhfkit.judges.lm_judge import LMJudge
from rlhfkit.judges.spec import REWARD_JUDGES, parse_judge_spec


class LMJudgeReward:
    """The ``judge: lm:DIR`` source, called like a reward function: ``(prompts, completions, **columns)`` →
    one probability in (0, 1) per completion (see the module docstring). ``model`` is the judge's LM (the
    online trainer moves it to the policy's device)."""

    def __init__(self, judge: LMJudge) -> None:
        self.judge = judge
        self.judge.model.requires_grad_(False)  # frozen: never in an optimizer, never a gradient

    @classmethod
    def from_spec(cls, spec: str, *, dtype: Any = None, batch_size: int = 16) -> LMJudgeReward:
        """Load the judge named ``spec`` (``lm:DIR``, as ``--judge`` writes it; :data:`REWARD_JUDGES`)."""
        folder = parse_judge_spec(spec, REWARD_JUDGES).folder
        return cls(LMJudge.from_folder(folder, dtype=dtype, batch_size=batch_size, name=spec))

    @property
    def model(self):
        return self.judge.model

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
        logodds = self.judge.score_batch(list(prompts), list(completions))
        return [yes_probability(x) for x in logodds]


def yes_probability(logodds: float) -> float:
    """``σ(ℓ)``, computed without overflow for large |ℓ|."""
    if logodds >= 0:
        return 1.0 / (1.0 + math.exp(-logodds))
    e = math.exp(logodds)
    return e / (1.0 + e)
