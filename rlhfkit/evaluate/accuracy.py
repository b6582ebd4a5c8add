"""Accuracy on problems with exact answers (RL with verifiable rewards), before and after training.

Each prompt row carries its ``answer``; the policy answers once, greedily (no sampling noise: the same model
gives the same answers), within ``max_new_tokens``; a response is right by
:func:`rlhfkit.rewards.verifiable.is_correct` — its last number equals a numeric answer (GSM8K's convention)
— the same check the reward function used in training. A response cut at the budget counts as it reads.

Intervals are percentile bootstraps over problems (:func:`rlhfkit.worlds.protocol.paired_bootstrap_ci`);
the gain's is *paired*: both models answer the same problems, so a resample moves a problem's two outcomes
together, which is narrower and right where an unpaired interval would not be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit.data.encode import encode_prompt
from rlhfkit.evaluate.sampling import decode_response, eos_token_ids
from rlhfkit.rewards.verifiable import is_correct
from rlhfkit.rollout.generate import generate
from rlhfkit.worlds.protocol import paired_bootstrap_ci


@dataclass
class Answers:
    """One model's greedy answers: ``correct[i]`` is 1 when ``texts[i]`` answers problem i right."""

    texts: list[str]
    correct: list[int]
    lengths: list[int]  # response tokens (EOS excluded)
    ended: list[bool]   # stopped by an EOS within the budget

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)


def answer_problems(model, tokenizer, rows: Sequence[Any], *, max_new_tokens: int, batch_size: int = 32,
                    max_prompt_length: int | None = None) -> Answers:
    """Greedy answers of ``model`` to ``rows`` (:class:`~rlhfkit.data.formats.PromptRow`s whose ``fields``
    hold ``answer``), checked against each row's answer."""
    answers = [str(row.fields.get("answer", "")).strip() for row in rows]
    missing = [row.origin for row, answer in zip(rows, answers) if not answer]
    if missing:
        raise ValueError(f"{missing[0]}: the row has no 'answer' to check the response against")
    encoded, _ = encode_prompt(tokenizer, rows, max_prompt_length=max_prompt_length)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    output = generate(model, [e.prompt_ids for e in encoded], max_new_tokens=max_new_tokens, greedy=True,
                      eos_token_id=eos_ids, pad_token_id=pad_id, batch_size=batch_size)
    texts, lengths, ended = [], [], []
    for ids in output.response_token_lists():
        stop = next((k for k, token in enumerate(ids) if token in eos_ids), None)
        texts.append(decode_response(tokenizer, ids, eos_ids))
        lengths.append(len(ids) if stop is None else stop)
        ended.append(stop is not None)
    correct = [int(is_correct(text, answer)) for text, answer in zip(texts, answers)]
    return Answers(texts, correct, lengths, ended)


def accuracy_summary(before: Sequence[int], after: Sequence[int], *, n_bootstrap: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Accuracy before and after with intervals, and the paired gain with its interval (``gain_ci_low`` > 0:
    the gain is not sampling luck at this level). ``before[i]`` and ``after[i]`` are 0/1 on problem i."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need the same non-empty problems before and after, got {len(before)} and {len(after)}")
    ones = [1] * len(before)
    kw = {"n_bootstrap": n_bootstrap, "seed": seed, "confidence": confidence}
    b_low, b_high = paired_bootstrap_ci([float(x) for x in before], ones, **kw)
    a_low, a_high = paired_bootstrap_ci([float(x) for x in after], ones, **kw)
    g_low, g_high = paired_bootstrap_ci([float(a - b) for a, b in zip(after, before)], ones, **kw)
    n = len(before)
    return {"problems": n, "before": sum(before) / n, "before_ci_low": b_low, "before_ci_high": b_high,
            "after": sum(after) / n, "after_ci_low": a_low, "after_ci_high": a_high,
            "gain": (sum(after) - sum(before)) / n, "gain_ci_low": g_low, "gain_ci_high": g_high,
            "fixed": sum(1 for a, b in zip(after, before) if a > b) / n,
            "broken": sum(1 for a, b in zip(after, before) if a < b) / n}

