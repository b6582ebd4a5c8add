"""Rankings and grouped comparisons as plain data (standard library only).

A ranking of K responses, best → worst, implies K(K−1)/2 comparisons: for positions i < j, the response
ranked at i is preferred over the one ranked at j. InstructGPT (Ouyang et al. 2022, §3.5 / App. C.4)
keeps all comparisons of one prompt in one batch element: the K responses get one forward pass each and
the loss averages over the prompt's pairs, instead of treating the pairs as independent examples (which
overfits, since each response appears in K−1 pairs). A :class:`ComparisonGroup` is that unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rlhfkit.data.rows import PreferenceRow, Prompt, RankingRow, Response
from rlhfkit.data.validate import response_key


def n_pairs(k: int) -> int:
    """Number of comparisons a ranking of ``k`` responses implies: k(k−1)/2."""
    return k * (k - 1) // 2


def ranking_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """All ``(chosen, rejected)`` response-index pairs implied by ``ranking`` (indices, best first).

    ``[2, 0, 1]`` (response 2 best, then 0, then 1) gives ``[(2, 0), (2, 1), (0, 1)]``: every pair of
    positions i < j, in that order.
    """
    return [(ranking[i], ranking[j]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))]


@dataclass(frozen=True)
class ComparisonGroup:
    """The responses to one prompt and every comparison among them.

    ``pairs`` holds ``(chosen, rejected)`` indices into ``responses``. The reward collator puts a group's
    responses in one batch and scores all its pairs (see ``collate.collate_groups``).
    """

    prompt: Prompt
    responses: list[Response]
    pairs: list[tuple[int, int]]
    origin: str = field(default="", compare=False)


def ranking_groups(rows: Iterable[RankingRow]) -> list[ComparisonGroup]:
    """One group per ranking row, with its K(K−1)/2 pairs."""
    return [
        ComparisonGroup(row.prompt, list(row.responses), ranking_pairs(row.ranking), row.origin)
        for row in rows
    ]


def preference_rows_from_rankings(rows: Iterable[RankingRow]) -> list[PreferenceRow]:
    """Flatten rankings into independent preference pairs (for DPO), K(K−1)/2 per row, grouped in order.

    Each pair's origin names the source row and the pair, e.g. ``"r.jsonl line 3, pair (2, 0)"``.
    """
    flat = []
    for row in rows:
        for chosen, rejected in ranking_pairs(row.ranking):
            origin = f"{row.origin}, pair ({chosen}, {rejected})"
            flat.append(PreferenceRow(row.prompt, row.responses[chosen], row.responses[rejected], origin))
    return flat


def _prompt_key(prompt: Prompt) -> tuple[tuple[str, str], ...]:
    if isinstance(prompt, str):
        return (("user", prompt),)
    return tuple((m.role, m.content) for m in prompt)


def group_preferences_by_prompt(rows: Iterable[PreferenceRow]) -> list[ComparisonGroup]:
    """Gather preference rows that share a prompt into one group each (first-appearance order).

    Equal responses (up to surrounding whitespace) become one entry of ``responses``; every row stays one
    pair, so repeated or contradicting judgements of the same two responses are all kept, as annotator
    disagreement should be. Use it for pairwise data with several comparisons per prompt (the
    annotation app's exports) to batch them the InstructGPT way.
    """
    groups: dict[tuple, tuple[Prompt, list[Response], dict, list[tuple[int, int]], list[str]]] = {}
    for row in rows:
        prompt, responses, index_of, pairs, origins = groups.setdefault(
            _prompt_key(row.prompt), (row.prompt, [], {}, [], [])
        )
        indices = []
        for response in (row.chosen, row.rejected):
            key = response_key(response)
            if key not in index_of:
                index_of[key] = len(responses)
                responses.append(response)
            indices.append(index_of[key])
        pairs.append((indices[0], indices[1]))
        origins.append(row.origin)
    return [
        ComparisonGroup(prompt, responses, pairs, _join_origins(origins))
        for prompt, responses, _, pairs, origins in groups.values()
    ]


def _join_origins(origins: list[str]) -> str:
    """``"a.jsonl line 3"`` + ``"a.jsonl line 9"`` → ``"a.jsonl line 3 (+1 more: line 9)"``."""
    if len(origins) == 1:
        return origins[0]
    rest = ", ".join(" ".join(o.split(" ")[-2:]) for o in origins[1:4])  # "line 9" / "row 8"
    more = f", … {len(origins) - 4} more" if len(origins) > 4 else ""
    return f"{origins[0]} (+{len(origins) - 1} more: {rest}{more})"
