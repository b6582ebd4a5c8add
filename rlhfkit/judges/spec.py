"""A judge's name, as ``--judge`` or a ``rewards`` source writes it, parsed in one place.

==============  ==============================================================================
name            judge
==============  ==============================================================================
``gold``        the built-in world's ground truth
``ai``          the world's imperfect AI judge
``simulated``   the world's simulated human annotators (``rlhfkit label`` only)
``reward:DIR``  a saved reward model's normalised score
``lm:DIR``      a local causal LM asked "A or B?" (pairwise) or "Yes or No?" (pointwise)
==============  ==============================================================================

Each use accepts its own subset: :data:`EVAL_JUDGES` (``rlhfkit eval``), :data:`LABEL_JUDGES`
(``rlhfkit label``), :data:`REWARD_JUDGES` (a ``judge:`` reward source), :data:`ITERATE_JUDGES`
(``labels.judge`` of ``rlhfkit iterate``). Imports only the standard library
and :mod:`rlhfkit.errors`, so the web app and config validation can parse a name without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.errors import UserError

EVAL_JUDGES = ("gold", "ai", "reward:DIR", "lm:DIR")
LABEL_JUDGES = ("gold", "ai", "simulated", "reward:DIR", "lm:DIR")
REWARD_JUDGES = ("lm:DIR",)
ITERATE_JUDGES = ("gold", "ai", "reward:DIR", "lm:DIR")  # labels.judge of rlhfkit iterate

FOLDERS = {"reward": "the reward-model folder", "lm": "the causal-LM folder"}  # the kinds that name a folder


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed judge name: ``kind`` (gold, ai, simulated, reward or lm), ``folder`` (reward and lm only,
    else None) and ``text``, the name as written (the judge's name in reports)."""

    kind: str
    folder: str | None
    text: str


def parse_judge_spec(spec: str, valid: Sequence[str] = EVAL_JUDGES) -> JudgeSpec:
    """``spec`` parsed, if it is one of the forms in ``valid`` (``"gold"``, ``"lm:DIR"``, …); otherwise a
    one-sentence :class:`~rlhfkit.errors.UserError` listing them, or naming the missing folder."""
    kind, colon, folder = spec.partition(":")  # the first colon: a folder may hold more
    form = f"{kind}:DIR" if colon and kind in FOLDERS else spec
    if form not in valid:
        raise UserError(f"unknown judge {spec!r}; valid: {', '.join(valid)}.")
    if colon and not folder:
        raise UserError(f"judge {form} needs {FOLDERS[kind]} after '{kind}:'.")
    return JudgeSpec(kind, folder or None, spec)
