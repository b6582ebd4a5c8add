"""Simulated annotators: noisy people whose noise is calibrated, not assumed.

An annotator compares two responses to a prompt by gold utility u (plus an optional taste for
length) and prefers A with probability ``sigma((u_A - u_B) / tau)``. Equal utilities (within
``tie_margin``) are a tie; two bad responses may optionally be ``"both_bad"``. Every decision is
a deterministic function of ``(seed, prompt, {a, b})``: the same annotator asked twice answers
the same, and ``compare(p, a, b)`` mirrors ``compare(p, b, a)``.

A thumbs up / down on one response is the same person's judgement against a fixed bar: up with
probability ``sigma((u - THUMBS_THRESHOLD) / tau)``, the same calibrated ``tau``, one deterministic
draw per ``(seed, prompt, response)``.

``tau`` is chosen by ``calibrate_tau`` so that two annotators disagree on 20-30 % of the pairs
that carry a preference: pairs of different text *and* different utility (WORLD_NOTES,
pitfall 5). Identical or equal-utility pairs are ties for every annotator, so counting them
would dilute disagreement and push tau up until the labels on real preferences were noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .judge import GoldJudge
from .prompts import Prompt
from .text import normalize, word_count

Pair = tuple[Prompt | str, str, str]
THUMBS_THRESHOLD = 0.5
"""The gold utility a response must exceed to be "good" for a thumbs up: every family's failures score at most
0.2 (harmful ``unhelpful_idk``) and a good response 1.0 less its style penalties (docs/world.md § 4), so 0.5
splits them with the style penalties on the good side unless they are heavy (rude or rambling)."""


def stable_uniform(*parts: object) -> float:
    """A uniform number in [0, 1) determined by ``parts`` (same in every process, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _text(prompt: Prompt | str) -> str:
    return prompt.text if isinstance(prompt, Prompt) else prompt


class SimulatedAnnotator:
    """One simulated person. ``length_bias`` adds that much utility per word (a taste for long
    answers); ``both_bad_below`` (None: off) answers ``"both_bad"`` when both utilities are below it."""

    def __init__(self, tau: float, seed: int = 0, length_bias: float = 0.0, tie_margin: float = 0.05,
                 both_bad_below: float | None = None, *, judge: GoldJudge) -> None:
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau, self.seed, self.length_bias = tau, seed, length_bias
        self.tie_margin, self.both_bad_below, self.judge = tie_margin, both_bad_below, judge

    def utility(self, prompt: Prompt | str, response: str) -> float:
        return self.judge.score(prompt, response) + self.length_bias * word_count(response)

    def prob_a(self, prompt: Prompt | str, a: str, b: str) -> float:
        """P(prefer a) = sigma((u_a - u_b) / tau), ignoring ties."""
        return sigmoid((self.utility(prompt, a) - self.utility(prompt, b)) / self.tau)

    def thumbs(self, prompt: Prompt | str, response: str, threshold: float = THUMBS_THRESHOLD) -> str:
        """``"up"`` with probability ``sigma((u - threshold) / tau)``, else ``"down"``; deterministic in
        ``(seed, prompt, response)``."""
        r = stable_uniform("thumbs", self.seed, _text(prompt), response)
        return "up" if r < sigmoid((self.utility(prompt, response) - threshold) / self.tau) else "down"

    def compare(self, prompt: Prompt | str, a: str, b: str) -> str:
        """``"a"``, ``"b"``, ``"tie"`` or (when enabled) ``"both_bad"``."""
        if normalize(a) == normalize(b):
            return "tie"
        ua, ub = self.utility(prompt, a), self.utility(prompt, b)
        if self.both_bad_below is not None and max(ua, ub) < self.both_bad_below:
            return "both_bad"
        if abs(ua - ub) <= self.tie_margin:
            return "tie"
        r, a_first = _draw(self.seed, prompt, a, b)
        return _decide(ua - ub, r, a_first, self.tau)


def _draw(seed: int, prompt: Prompt | str, a: str, b: str) -> tuple[float, bool]:
    """The annotator's random number for the unordered pair {a, b}, and whether a sorts first.
    Drawing once per unordered pair makes swapping a and b mirror the answer."""
    a_first = a <= b
    first, second = (a, b) if a_first else (b, a)
    return stable_uniform("annotator", seed, _text(prompt), first, second), a_first


def _decide(delta_ab: float, r: float, a_first: bool, tau: float) -> str:
    """The first-sorted response wins when r < sigma((u_first - u_second) / tau)."""
    delta_first = delta_ab if a_first else -delta_ab
    first_wins = r < sigmoid(delta_first / tau)
    return "a" if first_wins == a_first else "b"


def gold_margin_pairs(pairs: Iterable[Pair], judge: GoldJudge, margin: float) -> list[Pair]:
    """The pairs of different text whose gold utilities differ by more than ``margin``."""
    out = []
    for prompt, a, b in pairs:
        if normalize(a) != normalize(b) and abs(judge.score(prompt, a) - judge.score(prompt, b)) > margin:
            out.append((prompt, a, b))
    return out


def disagreement(pairs: Sequence[Pair], first: SimulatedAnnotator, second: SimulatedAnnotator) -> float:
    """Fraction of ``pairs`` on which two annotators give different labels."""
    if not pairs:
        return float("nan")
    return sum(first.compare(*p) != second.compare(*p) for p in pairs) / len(pairs)


def agreement_with_gold(pairs: Iterable[Pair], labeller: object, judge: GoldJudge,
                        margin: float = 0.05) -> dict[str, float]:
    """How often ``labeller.compare`` picks the gold-better response, on pairs of distinct utility.

    Returns ``{"agreement", "ties", "n"}``: a tie from the labeller counts as not agreeing.
    """
    distinct = gold_margin_pairs(pairs, judge, margin)
    agree = ties = 0
    for prompt, a, b in distinct:
        label = labeller.compare(prompt, a, b)  # type: ignore[attr-defined]
        ties += label == "tie"
        agree += label == judge.compare(prompt, a, b)
    n = len(distinct)
    return {"agreement": agree / n if n else float("nan"), "ties": ties / n if n else float("nan"), "n": n}


@dataclass(frozen=True)
class Calibration:
    tau: float
    disagreement: float               # on the calibration pairs (different text and utility)
    disagreement_nonidentical: float  # on all pairs of different text (ties count as agreement)
    agreement_with_gold: float
    n_pairs: int
    n_identical: int
    n_equal_utility: int               # different text, utility within tie_margin
    n_used: int
    in_target: bool


def calibrate_tau(pairs: Sequence[Pair], judge: GoldJudge, target: tuple[float, float] = (0.20, 0.30),
                  seeds: tuple[int, int] = (1, 2), tie_margin: float = 0.05, length_bias: float = 0.0,
                  grid: Sequence[float] | None = None) -> Calibration:
    """Pick tau so two annotators disagree on a fraction of the preference-carrying pairs
    (different text, |u_a - u_b| > tie_margin) as close as possible to the middle of ``target``.

    ``pairs`` should be sampled from the policy whose outputs will be labelled (the SFT policy).
    The search is over a log grid (default 0.01 .. 10, 61 points); the measured disagreement is
    returned with ``in_target`` saying whether it landed inside ``target``.
    """
    grid = list(grid) if grid is not None else [10 ** (-2 + 3 * i / 60) for i in range(61)]
    identical = [p for p in pairs if normalize(p[1]) == normalize(p[2])]
    nonidentical = [p for p in pairs if normalize(p[1]) != normalize(p[2])]
    used = gold_margin_pairs(nonidentical, judge, tie_margin)
    if not used:
        raise ValueError("no pair of different utility to calibrate on: sample more or more varied responses")
    mid = sum(target) / 2
    # Utilities and random draws do not depend on tau: compute them once, then scan the grid.
    probe = SimulatedAnnotator(1.0, seeds[0], length_bias, tie_margin, judge=judge)
    deltas = [probe.utility(p, a) - probe.utility(p, b) for p, a, b in used]
    draws = [[_draw(seed, p, a, b) for p, a, b in used] for seed in seeds]

    def disagreement_at(tau: float) -> float:
        return sum(_decide(d, *x, tau) != _decide(d, *y, tau) for d, x, y in zip(deltas, *draws)) / len(used)

    best = min(grid, key=lambda tau: abs(disagreement_at(tau) - mid))
    first, second = (SimulatedAnnotator(best, s, length_bias, tie_margin, judge=judge) for s in seeds)
    d = disagreement(used, first, second)
    return Calibration(
        tau=best,
        disagreement=d,
        disagreement_nonidentical=disagreement(nonidentical, first, second) if nonidentical else float("nan"),
        agreement_with_gold=agreement_with_gold(used, first, judge, tie_margin)["agreement"],
        n_pairs=len(pairs),
        n_identical=len(identical),
        n_equal_utility=len(nonidentical) - len(used),
        n_used=len(used),
        in_target=target[0] <= d <= target[1],
    )


def label_pairs(samples: Iterable[Pair], annotator: object) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Turn sampled ``(prompt, a, b)`` into preference rows ``{"prompt", "chosen", "rejected"}``.

    Identical pairs, ties and "both_bad" answers are dropped; the counts say how many of each
    (``pairs``, ``identical``, ``ties``, ``both_bad``, ``labelled``).
    """
    rows: list[dict[str, str]] = []
    counts = {"pairs": 0, "identical": 0, "ties": 0, "both_bad": 0, "labelled": 0}
    for prompt, a, b in samples:
        counts["pairs"] += 1
        if normalize(a) == normalize(b):
            counts["identical"] += 1
            continue
        label = annotator.compare(prompt, a, b)  # type: ignore[attr-defined]
        if label in ("tie", "both_bad"):
            counts["ties" if label == "tie" else "both_bad"] += 1
            continue
        chosen, rejected = (a, b) if label == "a" else (b, a)
        rows.append({"prompt": _text(prompt), "chosen": chosen, "rejected": rejected})
        counts["labelled"] += 1
    return rows, counts
