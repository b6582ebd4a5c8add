"""Policy A against policy B with a judge: the glue between sampling, judges, KL and the world's protocol.

:func:`evaluate_policy_pair` samples both policies (or takes samples already drawn — the demo samples its
SFT baseline once and compares five policies with it), scores every pair with the judge, estimates
KL(A ‖ B) on A's samples and returns one flat dict of figures (keys in docs/evaluation.md):

- ``judge/*`` for any judge: mean scores, the score difference with a paired bootstrap interval (prompts
  resampled with their samples), win rates with ties counted half and decisive;
- ``gold/*``, ``win_rate/*``, ``rates/*``, ``behaviours/*`` from the built-in world's protocol
  (:func:`rlhfkit.worlds.compare_policies`) when a gold judge is given — only the world knows behaviours;
- ``pairs/identical_fraction``, ``length/<a|b>/*``, ``counts/*`` and ``kl/*`` always.

Sample j of A is compared with sample j of B for the same prompt; the two sides are sampled from
independent random streams (:func:`rlhfkit.evaluate.sampling.stream_seed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.evaluate.kl import check_same_tokenizer, sequence_kl
from rlhfkit.evaluate.sampling import PolicySamples, as_data_prompt, sample_policy, stream_seed
from rlhfkit.judges.base import outcome, score_nested, tie_margin_of
from rlhfkit.worlds.protocol import compare_policies, paired_bootstrap_ci


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _check_shapes(prompts: Sequence[Any], responses_a: Sequence[Sequence[str]],
                  responses_b: Sequence[Sequence[str]]) -> None:
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(f"need one list of responses per prompt: {len(prompts)} prompts, "
                         f"{len(responses_a)} lists for A, {len(responses_b)} for B")
    for i, (ra, rb) in enumerate(zip(responses_a, responses_b)):
        if len(ra) != len(rb) or not ra:
            raise ValueError(f"prompt {i}: A has {len(ra)} samples and B {len(rb)}; need the same number, >= 1")


def judge_comparison(judge: object, prompts: Sequence[Any], responses_a: Sequence[Sequence[str]],
                     responses_b: Sequence[Sequence[str]], *, n_bootstrap: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Judge-agnostic figures of A against B (``judge/*``, ``pairs/identical_fraction``, lengths, counts).

    Each pair gets a verdict and a difference d (A − B): from a pointwise judge its scores, d = s_A − s_B and a
    tie when they differ by at most the judge's ``tie_margin``; from a pairwise judge (one with ``margins``,
    the LM judge) its margin m(a, b) over both orders, d = m and a tie when |m| ≤ ``tie_margin`` — the verdict
    ``rlhfkit label`` would write. Identical texts (after collapsing whitespace) are a tie with d = 0 for a
    pairwise judge, asked nothing. ``judge/win_rate/ties_half = (wins + ½ ties) / pairs``;
    ``judge/win_rate/decisive = wins / (wins + losses)`` (None when no pair is decisive).
    """
    _check_shapes(prompts, responses_a, responses_b)
    pairwise = callable(getattr(judge, "margins", None))
    read = _pairwise_reading if pairwise else _pointwise_reading
    differences, extra = read(judge, prompts, responses_a, responses_b)
    margin = tie_margin_of(judge)
    wins = losses = ties = identical = 0
    for ds, ta, tb in zip(differences, responses_a, responses_b):
        for d, text_a, text_b in zip(ds, ta, tb):
            same = _same_text(text_a, text_b)
            identical += same
            verdict = "tie" if same else outcome(d, 0.0, margin)
            wins += verdict == "a"
            losses += verdict == "b"
            ties += verdict == "tie"
    n = wins + losses + ties
    diffs = [sum(ds) for ds in differences]
    counts = [len(ds) for ds in differences]
    low, high = paired_bootstrap_ci(diffs, counts, n_bootstrap, seed, confidence)
    words = {side: sum(len(t.split()) for ts in texts for t in ts) / n
             for side, texts in (("a", responses_a), ("b", responses_b))}
    return {
        "counts/prompts": len(prompts), "counts/pairs": n,
        "judge/name": str(getattr(judge, "name", type(judge).__name__)),
        **extra, "judge/score_delta": sum(diffs) / n,
        "judge/score_delta_ci_low": low, "judge/score_delta_ci_high": high,
        "judge/win_rate/ties_half": (wins + 0.5 * ties) / n,
        "judge/win_rate/decisive": wins / (wins + losses) if wins + losses else None,
        "judge/pairs/win_fraction": wins / n, "judge/pairs/loss_fraction": losses / n,
        "judge/pairs/tie_fraction": ties / n,
        "pairs/identical_fraction": identical / n,
        "length/a/mean_words": words["a"], "length/b/mean_words": words["b"],
    }


def _pointwise_reading(judge: object, prompts: Sequence[Any], responses_a: Sequence[Sequence[str]],
                       responses_b: Sequence[Sequence[str]]) -> tuple[list[list[float]], dict]:
    """``(s_A − s_B per pair, by prompt; {judge/score_a, judge/score_b}: the mean scores)``."""
    scores_a = score_nested(judge, prompts, responses_a)
    scores_b = score_nested(judge, prompts, responses_b)
    n = sum(map(len, scores_a))
    differences = [[a - b for a, b in zip(sa, sb)] for sa, sb in zip(scores_a, scores_b)]
    return differences, {"judge/score_a": sum(map(sum, scores_a)) / n, "judge/score_b": sum(map(sum, scores_b)) / n}


def _pairwise_reading(judge: Any, prompts: Sequence[Any], responses_a: Sequence[Sequence[str]],
                      responses_b: Sequence[Sequence[str]]) -> tuple[list[list[float]], dict]:
    """``(m(a, b) per pair, by prompt; {judge/score_a, judge/score_b: None, judge/position_bias})``: the
    judge's margins in one batched call over the pairs whose texts differ (0 for identical ones). A
    pairwise judge gives no score of one response, so the mean scores are None; ``judge/position_bias`` is the
    mean of the asked pairs' position bias (how much the judge favours the first slot, cancelled in m)."""
    asked = [(i, j) for i, (ta, tb) in enumerate(zip(responses_a, responses_b))
             for j, (a, b) in enumerate(zip(ta, tb)) if not _same_text(a, b)]
    found = judge.margins([prompts[i] for i, _ in asked], [responses_a[i][j] for i, j in asked],
                          [responses_b[i][j] for i, j in asked]) if asked else []
    differences = [[0.0] * len(ta) for ta in responses_a]
    for (i, j), pair in zip(asked, found):
        differences[i][j] = float(pair.margin)
    bias = sum(pair.position_bias for pair in found) / len(found) if found else None
    return differences, {"judge/score_a": None, "judge/score_b": None, "judge/position_bias": bias}


def compare_samples(judge: object, samples_a: PolicySamples, samples_b: PolicySamples, *, gold: object = None,
                    n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Every text-based figure of A against B: :func:`judge_comparison`, plus the world's protocol when
    ``gold`` (a judge with ``judge(prompt, response) -> Judgement``) is given, plus token lengths."""
    if len(samples_a.prompts) != len(samples_b.prompts) or any(
            a != b for a, b in zip(samples_a.prompts, samples_b.prompts)):
        raise ValueError("policy and baseline samples are for different prompts")
    prompts = samples_a.prompts
    metrics = judge_comparison(judge, prompts, samples_a.texts, samples_b.texts, n_bootstrap=n_bootstrap,
                               seed=seed, confidence=confidence)
    if gold is not None:  # the world's keys; its word counts and identical-text test replace the generic ones
        metrics.update(compare_policies(gold, prompts, samples_a.texts, samples_b.texts, n_bootstrap=n_bootstrap,
                                        seed=seed, confidence=confidence))
    for side, samples in (("a", samples_a), ("b", samples_b)):
        tokens = samples.mean_tokens()
        if tokens is not None:
            metrics[f"length/{side}/mean_tokens"] = tokens
    return metrics


def gold_of(judge: object) -> object | None:
    """``judge`` itself when it can produce the world protocol's judgements (a gold judge), else None."""
    return judge if callable(getattr(judge, "judge", None)) else None


def evaluate_policy_pair(policy, baseline, tokenizer, judge, prompts: Sequence[Any], n_samples: int = 2,
                         seed: int = 0, *, max_new_tokens: int = 48, batch_size: int | None = 64,
                         template: str | None = None, policy_samples: PolicySamples | None = None,
                         baseline_samples: PolicySamples | None = None, baseline_tokenizer=None,
                         gold: object = "auto", kl: float | None = None, compute_kl: bool = True,
                         kl_batch_size: int = 16, n_bootstrap: int = 1000, confidence: float = 0.95) -> dict:
    """Policy A (``policy``) against baseline B (``baseline``) judged by ``judge``: one flat dict of figures.

    Models are in-memory causal LMs (plain or PEFT). Samples: ``n_samples`` per prompt at temperature 1,
    A from ``stream_seed(seed, "policy")``, B from ``stream_seed(seed, "baseline")``; pass
    ``policy_samples`` / ``baseline_samples`` (from :func:`sample_policy`, same prompts and ``n_samples``)
    to reuse samples — then the corresponding model may be None. ``gold``: a gold judge for the world's
    figures: ``"auto"`` uses ``judge`` when it is one (:func:`gold_of`), None skips them.
    KL(A ‖ B) is estimated on A's samples when both models and A's tokens are available and
    ``compute_kl``; ``kl`` overrides it (e.g. :func:`rlhfkit.evaluate.best_of_n.best_of_n_kl`).
    ``baseline_tokenizer`` (default ``tokenizer``) samples B and must match ``tokenizer`` for KL.
    """
    prompts = [as_data_prompt(p) for p in prompts]
    if policy_samples is None:
        if policy is None:
            raise ValueError("give the policy model or its samples")
        policy_samples = sample_policy(policy, tokenizer, prompts, n_samples, seed=stream_seed(seed, "policy"),
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, template=template)
    if baseline_samples is None:
        if baseline is None:
            raise ValueError("give the baseline model or its samples")
        baseline_samples = sample_policy(baseline, baseline_tokenizer or tokenizer, prompts, n_samples,
                                         seed=stream_seed(seed, "baseline"), max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, template=template)
    gold = gold_of(judge) if isinstance(gold, str) and gold == "auto" else gold
    metrics = compare_samples(judge, policy_samples, baseline_samples, gold=gold, n_bootstrap=n_bootstrap,
                              seed=seed, confidence=confidence)
    if kl is not None:
        metrics["kl/nats_per_seq"] = float(kl)
    elif compute_kl and policy is not None and baseline is not None and policy_samples.generation is not None:
        if baseline_tokenizer is not None:
            check_same_tokenizer(tokenizer, baseline_tokenizer, ("policy", "baseline"))
        metrics.update(sequence_kl(policy, baseline, policy_samples, batch_size=kl_batch_size).metrics())
    else:
        metrics["kl/nats_per_seq"] = None
    return metrics
