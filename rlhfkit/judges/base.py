"""The one interface every judge has: ``score(prompt, response)`` and ``compare(prompt, a, b)``.

Evaluation needs nothing else from a judge (DESIGN.md, "judges are the only thing evaluation needs"):

- ``score(prompt, response) -> float``: higher is better. The scale is the judge's own (gold utility in
  [-1, 1]; the AI judge's rating in about [-1.5, 1.5]; a reward model's normalised score).
- ``compare(prompt, a, b) -> "a" | "b" | "tie"``: which response the judge prefers.

Optional, used when present: ``score_batch(prompts, responses) -> list[float]`` (one call for many texts;
a reward model batches its forwards) and ``tie_margin`` (scores this close count as a tie; 0 when absent).
:func:`score_all` and :func:`outcome` use them, so evaluation code never needs to know which judge it has.

``prompt`` is the user's text (a string) or, for judges that accept it, a list of chat messages.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

Verdict = Literal["a", "b", "tie"]
VERDICTS: tuple[str, ...] = ("a", "b", "tie")


@runtime_checkable
class Judge(Protocol):
    """Anything that scores one response and compares two (see the module docstring)."""

    name: str

    def score(self, prompt: Any, response: str) -> float: ...

    def compare(self, prompt: Any, a: str, b: str) -> str: ...


def outcome(score_a: float, score_b: float, tie_margin: float = 0.0) -> Verdict:
    """``"tie"`` when ``|score_a − score_b| ≤ tie_margin`` (plus 1e-9 for float noise), else the higher one."""
    if abs(score_a - score_b) <= tie_margin + 1e-9:
        return "tie"
    return "a" if score_a > score_b else "b"


def tie_margin_of(judge: object) -> float:
    """The judge's ``tie_margin`` attribute, 0.0 when it has none."""
    return float(getattr(judge, "tie_margin", 0.0) or 0.0)


def score_all(judge: object, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """Scores of ``responses[i]`` for ``prompts[i]``, through ``score_batch`` when the judge has it."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; need one response per prompt")
    batch = getattr(judge, "score_batch", None)
    if callable(batch):
        scores = [float(s) for s in batch(list(prompts), list(responses))]
        if len(scores) != len(responses):
            raise ValueError(f"score_batch returned {len(scores)} scores for {len(responses)} responses")
        return scores
    return [float(judge.score(p, r)) for p, r in zip(prompts, responses)]  # type: ignore[attr-defined]


def score_nested(judge: object, prompts: Sequence[Any], responses: Sequence[Sequence[str]]) -> list[list[float]]:
    """``scores[i][j]`` of ``responses[i][j]`` (K samples per prompt), scored in one :func:`score_all` call."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} lists of responses")
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat = score_all(judge, flat_prompts, [r for rs in responses for r in rs])
    out, start = [], 0
    for rs in responses:
        out.append(flat[start : start + len(rs)])
        start += len(rs)
    return out
