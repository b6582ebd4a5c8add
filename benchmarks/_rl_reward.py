"""The reward *function* both sides of ``bench_grpo_vs_trl.py`` call — this one file, imported by rlhfkit
(``rewards: [{function: benchmarks/_rl_reward.py:even_words}]``) and passed to TRL's ``GRPOTrainer`` as
``reward_funcs``. Plain Python on the decoded completion text, no model: the fraction of a completion's words
``w<k>`` with an even ``k`` (the word-level tokenizer of ``_rl_common.py``; one word = one token). Random
policies score ~0.5 with a spread of ~0.05 within a group, so every group has a non-zero advantage.

Signature of both libraries' convention: ``fn(prompts, completions, **columns) -> list[float]`` (TRL also passes
``completion_ids`` and the dataset's other columns as keywords).
"""

from __future__ import annotations


def even_words(prompts, completions, **kwargs) -> list[float]:
    scores = []
    for text in completions:
        words = [w for w in text.split() if w[:1] == "w" and w[1:].isdigit()]
        scores.append(sum(int(w[1:]) % 2 == 0 for w in words) / max(1, len(words)))
    return scores
