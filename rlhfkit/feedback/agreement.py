"""Inter-annotator agreement and annotator-quality statistics: pure functions of plain data.

Labels are any hashable values (for pairwise judgments: the canonical winner "0" / "1",
"tie" or "both_bad"). Undefined statistics (no data, or no variation to agree beyond
chance about) are `math.nan`, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """p_o = (1/n) Σ_i [a_i = b_i] over n items labelled by both raters (aligned sequences)."""
    if len(a) != len(b):
        raise ValueError(f"percent_agreement needs aligned label lists, got lengths {len(a)} and {len(b)}")
    if not a:
        return math.nan
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's κ for two raters on the same n items.

    κ = (p_o − p_e) / (1 − p_e), with p_o the observed agreement and
    p_e = Σ_c (n_a(c)/n)·(n_b(c)/n) the agreement expected from each rater's own label
    frequencies. NaN when p_e = 1 (both raters used one and the same label throughout).
    """
    p_o = percent_agreement(a, b)
    if math.isnan(p_o):
        return math.nan
    n = len(a)
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if math.isclose(p_e, 1.0):
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable]]) -> float:
    """Krippendorff's α for nominal data, any number of raters, missing values allowed.

    `units[u]` lists the values the raters who rated unit u gave it (missing ones left out).
    Units with fewer than two values are not pairable and are ignored. With the coincidence
    matrix o_ck = Σ_u (number of ordered c-k value pairs in u, from different raters) / (m_u − 1),
    n_c = Σ_k o_ck and n = Σ_c n_c:

        α = 1 − D_o / D_e,  D_o = (1/n) Σ_{c≠k} o_ck,  D_e = (1/(n(n−1))) Σ_{c≠k} n_c n_k.

    (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011.) NaN when D_e = 0.
    """
    coincidence: Counter[tuple[Hashable, Hashable]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c in counts:
            for k in counts:
                pairs = counts[c] * (counts[k] - (c == k))
                if pairs:
                    coincidence[(c, k)] += pairs / (m - 1)
    n_c: Counter[Hashable] = Counter()
    for (c, _k), o in coincidence.items():
        n_c[c] += o
    n = sum(n_c.values())
    if n <= 1:
        return math.nan
    observed_disagreement = sum(o for (c, k), o in coincidence.items() if c != k) / n
    expected_disagreement = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if expected_disagreement == 0:
        return math.nan
    return 1.0 - observed_disagreement / expected_disagreement


def kendall_tau(order_a: Sequence[Hashable], order_b: Sequence[Hashable]) -> float:
    """Kendall's τ between two strict rankings of the same K items (each listed best first).

    τ = (C − D) / (K(K−1)/2), C and D the numbers of item pairs the two rankings order the
    same way and the opposite way (no ties in a permutation, so τ_a = τ_b). NaN for K < 2.
    """
    if sorted(map(repr, order_a)) != sorted(map(repr, order_b)) or len(set(order_a)) != len(order_a):
        raise ValueError("kendall_tau needs two orderings of the same distinct items")
    k = len(order_a)
    if k < 2:
        return math.nan
    rank_a = {item: r for r, item in enumerate(order_a)}
    rank_b = {item: r for r, item in enumerate(order_b)}
    score = 0
    for x, y in combinations(order_a, 2):
        score += 1 if (rank_a[x] - rank_a[y]) * (rank_b[x] - rank_b[y]) > 0 else -1
    return score / (k * (k - 1) / 2)


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle ones for an even count); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def rate(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def pairwise_label_agreement(labels: Mapping[str, Mapping[Hashable, Hashable]]) -> list[dict]:
    """Per rater pair: items both labelled (`n`), percent agreement and Cohen's κ.

    `labels[rater][unit] = label`. Pairs of raters with no shared unit are left out.
    """
    rows = []
    for r1, r2 in combinations(sorted(labels), 2):
        shared = sorted(set(labels[r1]) & set(labels[r2]), key=repr)
        if not shared:
            continue
        a = [labels[r1][u] for u in shared]
        b = [labels[r2][u] for u in shared]
        rows.append({"raters": [r1, r2], "n": len(shared), "percent_agreement": percent_agreement(a, b),
                     "cohens_kappa": cohens_kappa(a, b)})
    return rows


def alpha_from_labels(labels: Mapping[str, Mapping[Hashable, Hashable]]) -> float:
    """Krippendorff's α (nominal) over all raters from `labels[rater][unit] = label`."""
    by_unit: dict[Hashable, list[Hashable]] = {}
    for per_unit in labels.values():
        for unit, label in per_unit.items():
            by_unit.setdefault(unit, []).append(label)
    return krippendorff_alpha_nominal(list(by_unit.values()))


def pairwise_ranking_agreement(rankings: Mapping[str, Mapping[Hashable, Sequence[int]]]) -> list[dict]:
    """Per rater pair: shared ranked units `n` and the mean Kendall τ between their rankings."""
    rows = []
    for r1, r2 in combinations(sorted(rankings), 2):
        shared = set(rankings[r1]) & set(rankings[r2])
        if not shared:
            continue
        taus = [kendall_tau(rankings[r1][u], rankings[r2][u]) for u in shared]
        rows.append({"raters": [r1, r2], "n": len(shared), "mean_kendall_tau": mean(taus)})
    return rows
