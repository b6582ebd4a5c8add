"""Best-of-N: picks the judge's favourite of each block of N samples; its KL formula."""

from __future__ import annotations

import math

import pytest

from rlhfkit.evaluate.best_of_n import best_of_n, best_of_n_kl, best_of_n_responses, pick_best
from rlhfkit.evaluate.sampling import sample_policy

try:
    from test_evaluate_common import micro_policy, some_world_prompts, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import micro_policy, some_world_prompts, world_tokenizer


class VowelJudge:
    """Scores a response by its number of vowels (any deterministic, text-dependent score will do)."""

    name = "vowels"

    def score(self, prompt, response):
        return float(sum(c in "aeiou" for c in response))

    def compare(self, prompt, a, b):
        return "tie"


def test_picks_the_highest_scoring_candidate_of_each_block():
    model, tok, prompts = micro_policy(0), world_tokenizer(), some_world_prompts(1)
    judge = VowelJudge()
    result = best_of_n(model, tok, judge, prompts, n=4, n_samples=2, seed=7, max_new_tokens=8, batch_size=16)
    # the candidates are the policy's own samples under the same seed ...
    candidates = sample_policy(model, tok, prompts, 8, seed=7, max_new_tokens=8, batch_size=16)
    assert result.candidates.texts == candidates.texts
    # ... and each pick is a maximum of its block of 4
    for i, prompt in enumerate(prompts):
        for j in range(2):
            block = candidates.texts[i][4 * j : 4 * j + 4]
            best = max(judge.score(prompt, t) for t in block)
            assert result.texts[i][j] in block and judge.score(prompt, result.texts[i][j]) == best
            assert result.scores[i][j] == best
    assert result.samples.n_samples == 2 and result.samples.generation is None
    assert result.kl == pytest.approx(math.log(4) - 0.75)
    assert best_of_n_responses(model, tok, judge, prompts, 4, 2, seed=7, max_new_tokens=8,
                               batch_size=16) == result.texts


def test_reuses_given_candidates_without_a_model_and_checks_their_number():
    model, tok, prompts = micro_policy(0), world_tokenizer(), some_world_prompts(1)[:3]
    candidates = sample_policy(model, tok, prompts, 3, seed=0, max_new_tokens=6)
    result = best_of_n(None, None, VowelJudge(), prompts, n=3, n_samples=1, seed=0, candidates=candidates)
    assert result.candidates is candidates and len(result.texts) == 3
    with pytest.raises(ValueError, match="need n · n_samples = 4"):
        best_of_n(None, None, VowelJudge(), prompts, n=2, n_samples=2, seed=0, candidates=candidates)


def test_pick_best_takes_the_first_of_equal_maxima():
    assert pick_best([[0.1, 0.5, 0.5, 0.2, 0.9, 0.9]], n=3, n_samples=2) == [[1, 4]]
    with pytest.raises(ValueError, match="expected 6 candidates"):
        pick_best([[0.1, 0.2]], n=3, n_samples=2)


def test_kl_formula_matches_the_exact_kl_of_best_of_n_over_many_distinct_scores():
    # π uniform over M responses with distinct scores; best-of-n picks rank k with probability
    # (k/M)^n − ((k−1)/M)^n. As M grows, KL(π_BoN ‖ π) tends to log n − (n−1)/n.
    m = 20_000
    for n in (1, 2, 4, 16):
        kl = 0.0
        for k in range(1, m + 1):
            p = (k / m) ** n - ((k - 1) / m) ** n
            if p > 0:
                kl += p * math.log(p * m)
        assert best_of_n_kl(n) == pytest.approx(kl, abs=2e-3)
    assert best_of_n_kl(1) == 0.0
    with pytest.raises(ValueError):
        best_of_n_kl(0)
