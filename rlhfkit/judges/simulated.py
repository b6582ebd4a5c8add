"""The built-in world's simulated annotators behind the :class:`~rlhfkit.judges.base.Judge` interface.

A :class:`SimulatedAnnotatorJudge` is one simulated person (:class:`rlhfkit.worlds.SimulatedAnnotator`):
it prefers A with probability ``σ((u_A − u_B)/τ)`` where ``u`` is gold utility plus an optional taste for
length, answers ``tie`` for identical texts or utilities within ``tie_margin``, and (optionally) ``both_bad``.
Its answers are deterministic in ``(seed, prompt, {a, b})``, so asking twice gives the same answer and
swapping A and B mirrors it (docs/world.md §5).

Two ways to ask:

- ``compare(prompt, a, b) -> "a" | "b" | "tie"`` — the judge interface (``both_bad`` reads as ``tie``);
- ``answer(prompt, a, b) -> "a" | "b" | "tie" | "both_bad"`` — what the person would click in the app;
- ``thumbs(prompt, response) -> "up" | "down"`` — a thumbs item: up with probability
  ``σ((u − THUMBS_THRESHOLD)/τ)`` (threshold 0.5 of gold utility; ``rlhfkit.worlds.annotators``).

``rlhfkit iterate`` runs a panel of these (:func:`annotator_panel`, seeds 1…N) as HTTP clients of the
annotation app; ``rlhfkit label --judge simulated`` uses one directly. :func:`world_sample_pairs` makes
response pairs from the world's own response generator (no model needed), for measuring judges against
gold. Torch-free.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections import Counter
from collections.abc import Sequence

from rlhfkit.worlds import (
    FAMILY_BEHAVIOURS,
    STYLES,
    THUMBS_THRESHOLD,
    GoldJudge,
    Prompt,
    SimulatedAnnotator,
    World,
    calibrate_tau,
    generate_response,
)

DEFAULT_TAU = 0.5
"""τ calibrated on the world's SFT-like response mix (:func:`world_sample_pairs`: 0.50–0.56, two annotators
then disagree on ~25 % of the pairs of distinct utility; docs/rlaif-and-iterate.md). ``rlhfkit iterate``
re-calibrates on its own round-1 samples."""


class SimulatedAnnotatorJudge:
    """One simulated annotator of the world (``world`` or ``World.build(world_seed)``).

    ``tau``: noise (see :func:`calibrated_tau`); ``seed``: which person (different seeds disagree on
    20–30 % of pairs at the calibrated τ); ``length_bias``: utility added per word (a taste for long
    answers); ``tie_margin``: utilities this close are a tie; ``both_bad_below``: answer ``both_bad`` when
    both utilities are below it (None: never).
    """

    def __init__(self, world: World | None = None, *, world_seed: int = 0, tau: float = DEFAULT_TAU, seed: int = 1,
                 length_bias: float = 0.0, tie_margin: float = 0.05, both_bad_below: float | None = None) -> None:
        self.world = world if world is not None else World.build(world_seed)
        self.gold = GoldJudge(self.world)
        self.inner = SimulatedAnnotator(tau, seed, length_bias, tie_margin, both_bad_below, judge=self.gold)
        self.name = f"simulated-{seed}"

    @property
    def tau(self) -> float:
        return self.inner.tau

    @property
    def tie_margin(self) -> float:
        return self.inner.tie_margin

    def score(self, prompt: Prompt | str, response: str) -> float:
        """The annotator's own utility of ``response``: gold utility plus ``length_bias`` per word."""
        return self.inner.utility(prompt, response)

    def score_batch(self, prompts: Sequence[Prompt | str], responses: Sequence[str]) -> list[float]:
        return [self.inner.utility(p, r) for p, r in zip(prompts, responses)]

    def answer(self, prompt: Prompt | str, a: str, b: str) -> str:
        """``"a"``, ``"b"``, ``"tie"`` or (with ``both_bad_below``) ``"both_bad"``."""
        return self.inner.compare(prompt, a, b)

    def compare(self, prompt: Prompt | str, a: str, b: str) -> str:
        label = self.inner.compare(prompt, a, b)
        return "tie" if label == "both_bad" else label

    def thumbs(self, prompt: Prompt | str, response: str, threshold: float = THUMBS_THRESHOLD) -> str:
        """The app's answer to a thumbs item: ``up`` (good) or ``down`` (bad)."""
        return self.inner.thumbs(prompt, response, threshold)

    def screen_choice(self, prompt: Prompt | str, left: str, right: str) -> str:
        """The app's answer for responses shown left (A) and right (B): ``A``, ``B``, ``tie`` or ``both_bad``."""
        label = self.inner.compare(prompt, left, right)
        return {"a": "A", "b": "B"}.get(label, label)

    def knows(self, prompt: object) -> bool:
        return isinstance(prompt, Prompt) or (isinstance(prompt, str) and self.world.find(prompt) is not None)


def annotator_panel(world: World, n: int, *, tau: float = DEFAULT_TAU, first_seed: int = 1, **kwargs) -> list[
        SimulatedAnnotatorJudge]:
    """``n`` different simulated people (seeds ``first_seed`` … ``first_seed + n − 1``) sharing τ and biases."""
    if n < 1:
        raise ValueError(f"a panel needs at least one annotator, got {n}")
    return [SimulatedAnnotatorJudge(world, tau=tau, seed=first_seed + i, **kwargs) for i in range(n)]


def calibrated_tau(world: World, pairs: Sequence[tuple[Prompt | str, str, str]], *, tie_margin: float = 0.05,
                   length_bias: float = 0.0, target: tuple[float, float] = (0.20, 0.30)):
    """τ such that two annotators disagree on ``target`` of the preference-carrying ``pairs``
    (:func:`rlhfkit.worlds.calibrate_tau`); returns the :class:`~rlhfkit.worlds.Calibration`, or None when
    no pair has two different utilities (e.g. every sample is incoherent), so there is nothing to calibrate."""
    try:
        return calibrate_tau(pairs, GoldJudge(world), target=target, tie_margin=tie_margin, length_bias=length_bias)
    except ValueError:
        return None


def world_sample_pairs(world: World, n: int, *, seed: int = 0, good_fraction: float = 0.75,
                       split: str = "train") -> list[tuple[Prompt, str, str]]:
    """``n`` pairs ``(prompt, a, b)`` written by the world's response generator, standing in for an SFT
    policy's samples: each response is ``good`` with probability ``good_fraction``, else a behaviour drawn
    uniformly from the family's (incoherent included), in style plain 70 %, polite / rude / rambling 10 %
    each. Prompts are family-balanced (``World.sample_prompts``). Deterministic in ``seed``."""
    rng = random.Random(f"world-sample-pairs-{world.seed}-{seed}")

    def sample(prompt: Prompt) -> str:
        behaviour = "good" if rng.random() < good_fraction else rng.choice(FAMILY_BEHAVIOURS[prompt.family])
        return generate_response(prompt, behaviour, rng, rng.choices(STYLES, weights=[7, 1, 1, 1])[0])

    return [(p, sample(p), sample(p)) for p in world.sample_prompts(n, seed=f"pairs-{seed}", split=split)]


# ---- acting as people: HTTP clients of the annotation app -------------------------------------------------


class JudgeInApp:
    """A judge (gold, AI, reward model: ``rlhfkit.judges.make_judge``) answering the app's pair items as one
    annotator would — RLAIF labels that go through the same app, export and statistics as people's. It
    answers pairs only (a thumbs bar on a judge's own score scale would be arbitrary): thumbs items are
    given back."""

    def __init__(self, judge, name: str) -> None:
        self.judge = judge
        self.name = name

    def screen_choice(self, prompt: Prompt | str, left: str, right: str) -> str:
        return {"a": "A", "b": "B"}.get(self.judge.compare(prompt, left, right), "tie")


def ensure_annotator(db_url: str, name: str) -> str:
    """Create app user ``name`` (role annotator), or reset its password if it exists; returns a fresh random
    password (never stored)."""
    from rlhfkit.feedback import commands

    password = secrets.token_urlsafe(18)
    try:
        commands.create_user(db_url, name, "annotator", password)
    except ValueError as exc:
        if "already exists" not in str(exc):
            raise
        commands.set_password(db_url, name, password)
    return password


def annotate_queue(url: str, name: str, password: str, annotator: SimulatedAnnotatorJudge, tally: Counter,
                   errors: list[str]) -> None:
    """One simulated person's session, as a person uses the app: log in, answer every pair (in screen terms:
    A, B, tie or both bad) and every thumbs item (up or down) the app leases to them, stop when it has
    nothing left for them."""
    from rlhfkit.feedback.client import FeedbackClient

    try:
        client = FeedbackClient(url)
        client.login(name, password)
        while (task := client.next_task()) is not None:
            if task.kind == "thumbs" and hasattr(annotator, "thumbs"):
                choice = annotator.thumbs(task.prompt, task.responses[0])
            elif task.kind == "pair":
                choice = annotator.screen_choice(task.prompt, task.responses[0], task.responses[1])
            else:  # rankings, demonstrations (and thumbs for a judge) are not theirs to answer: give the slot back
                client.skip(task.assignment_id)
                continue
            client.submit(task.assignment_id, choice=choice)
            tally[choice] += 1
    except Exception as exc:  # collected and raised by label_through_app, which waits for every thread
        errors.append(f"{name}: {type(exc).__name__}: {exc}")


def label_through_app(db_url: str, panel: Sequence[SimulatedAnnotatorJudge], *, url: str | None = None) -> Counter:
    """Every annotator of ``panel`` labels, concurrently (one thread and one app session each), until the app
    has no pair or thumbs item left for any of them. The app is served from ``db_url`` on a free loopback port for the
    duration, unless ``url`` names a running one. Returns the count of each screen choice submitted."""
    from rlhfkit.feedback import commands

    passwords = {annotator.name: ensure_annotator(db_url, annotator.name) for annotator in panel}
    tallies: list[Counter[str]] = [Counter() for _ in panel]  # one per thread: no shared counter to race on
    errors: list[str] = []

    def run_all(base_url: str) -> None:
        threads = [threading.Thread(target=annotate_queue, name=f"annotator-{a.name}",
                                    args=(base_url, a.name, passwords[a.name], a, tally, errors))
                   for a, tally in zip(panel, tallies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    if url is not None:
        run_all(url)
    else:
        with commands.start_server(db_url) as server:
            run_all(server.url)
    if errors:
        raise RuntimeError("simulated annotators failed: " + "; ".join(errors))
    return sum(tallies, Counter())
