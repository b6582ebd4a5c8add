"""Rankings become K(K−1)/2 pairs kept together by prompt."""

from __future__ import annotations

import itertools
import random

import pytest

from rlhfkit.data.formats import Message, PreferenceRow, RankingRow, load_rows
from rlhfkit.data.rankings import (
    ComparisonGroup,
    group_preferences_by_prompt,
    n_pairs,
    preference_rows_from_rankings,
    ranking_groups,
    ranking_pairs,
)


def test_hand_worked_k3_example():
    # responses: 0 "ok", 1 "bad", 2 "great"; ranking best→worst: great (2), ok (0), bad (1)
    row = RankingRow("Q", ["ok", "bad", "great"], [2, 0, 1], "r.jsonl line 4")
    assert ranking_pairs(row.ranking) == [(2, 0), (2, 1), (0, 1)]
    assert preference_rows_from_rankings([row]) == [
        PreferenceRow("Q", "great", "ok"),
        PreferenceRow("Q", "great", "bad"),
        PreferenceRow("Q", "ok", "bad"),
    ]
    assert [p.origin for p in preference_rows_from_rankings([row])][0] == "r.jsonl line 4, pair (2, 0)"
    (group,) = ranking_groups([row])
    assert group == ComparisonGroup("Q", ["ok", "bad", "great"], [(2, 0), (2, 1), (0, 1)])
    assert group.origin == "r.jsonl line 4"


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])
def test_every_ordered_pair_of_a_random_ranking(k):
    ranking = list(range(k))
    random.Random(k).shuffle(ranking)
    pairs = ranking_pairs(ranking)
    assert len(pairs) == n_pairs(k) == len(list(itertools.combinations(range(k), 2)))
    # each unordered pair once, oriented so the chosen one is ranked higher
    assert {frozenset(p) for p in pairs} == {frozenset(c) for c in itertools.combinations(range(k), 2)}
    position = {response: i for i, response in enumerate(ranking)}
    assert all(position[chosen] < position[rejected] for chosen, rejected in pairs)


def test_groups_stay_one_per_ranking_and_flatten_in_order():
    rows = load_rows(
        [
            {"prompt": "A", "responses": ["x", "y", "z"], "ranking": [0, 1, 2]},
            {"prompt": "B", "responses": ["u", "v"], "ranking": [1, 0]},
        ],
        "ranking",
    ).rows
    groups = ranking_groups(rows)
    assert [len(g.pairs) for g in groups] == [3, 1]
    flat = preference_rows_from_rankings(rows)
    assert [r.prompt for r in flat] == ["A", "A", "A", "B"]
    assert (flat[-1].chosen, flat[-1].rejected) == ("v", "u")


def test_group_preferences_by_prompt_shares_responses_and_keeps_every_judgement():
    user = [Message("user", "P")]
    rows = [
        PreferenceRow("Q", "a", "b", "f line 1"),
        PreferenceRow(user, "x", "y", "f line 2"),
        PreferenceRow("Q", "b ", "c", "f line 3"),  # "b " is response "b"
        PreferenceRow("Q", "b", "a", "f line 4"),  # disagrees with line 1: kept
    ]
    groups = group_preferences_by_prompt(rows)
    assert len(groups) == 2
    q, p = groups
    assert q.prompt == "Q" and q.responses == ["a", "b", "c"]
    assert q.pairs == [(0, 1), (1, 2), (1, 0)]
    assert q.origin == "f line 1 (+2 more: line 3, line 4)"
    assert p.prompt == user and p.responses == ["x", "y"] and p.pairs == [(0, 1)]
