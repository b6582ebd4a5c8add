"""``rlhfkit eval``'s printed table: figures stay in their columns whatever the judge's name."""

from __future__ import annotations

import re

from rlhfkit.evaluate.command import format_table
from rlhfkit.worlds.protocol import RATES

LONG = "reward:/some/long/path/to/a/reward/model"
NUMBER = re.compile(r"[+-]?\d+\.\d+|—")


def metrics(judge: str, world: bool) -> dict:
    m = {"judge/name": judge, "judge/score_a": 0.25, "judge/score_b": -0.5, "judge/score_delta": 0.75,
         "judge/score_delta_ci_low": 0.5, "judge/score_delta_ci_high": 1.0, "judge/win_rate/ties_half": 0.625,
         "judge/win_rate/decisive": 0.7, "judge/pairs/tie_fraction": 0.125, "pairs/identical_fraction": 0.0,
         "length/a/mean_words": 12.5, "length/b/mean_words": 10.0, "kl/nats_per_seq": 1.5,
         "kl/nats_per_seq_stderr": 0.25}
    if world:
        m |= {"gold/utility_a": 0.4, "gold/utility_b": 0.1, "gold/utility_delta": 0.3,
              "gold/utility_delta_ci_low": 0.2, "gold/utility_delta_ci_high": 0.4, "gold/goal_a": 0.5,
              "gold/goal_b": 0.2, "gold/goal_delta": 0.3, "win_rate/ties_half": 0.6, "win_rate/ties_half_cap": 0.9,
              "win_rate/decisive": 0.65, "win_rate/goal_decisive": 0.7, "pairs/tie_fraction": 0.2}
        m |= {f"rates/{side}/{name}": 0.125 for side in "ab" for name in RATES}
    return m


def figure_rows(table: str) -> list[tuple[str, re.Match]]:
    """``(label, first figure)`` of every indented row that holds figures."""
    rows = []
    for line in table.splitlines():
        first = NUMBER.search(line)
        if line.startswith("  ") and not line.startswith("  note:") and first is not None:
            rows.append((line[:first.start()], first))
    return rows


def a_column_ends(table: str) -> set[int]:
    """Where the A figure ends in the rows that have A and B columns (right-aligned: one place for all)."""
    rows = figure_rows(table)
    return {first.end() for label, first in rows if not label.lstrip().startswith(("win rate", "decisive",
                                                                                   "goal-only", "ties", "KL"))}


def settings(judge: str) -> dict:
    return {"policy": "runs/ppo", "baseline": "runs/sft", "judge": judge, "prompts": "p.jsonl", "samples": 2,
            "confidence": 0.95}


def test_a_long_judge_name_never_runs_into_the_figures():
    for world in (False, True):
        table = format_table(metrics(LONG, world), settings(LONG), ["a note"])
        rows = figure_rows(table)
        assert sum(LONG in label for label, _ in rows) == 4  # its score, two win rates, ties
        for label, _ in rows:  # at least two blanks between every label and its first figure
            assert label.endswith("  ") and label.strip(), (label, table)
        assert len(a_column_ends(table)) == 1, table  # and the A column still lines up
        assert len(rows) >= (14 if world else 5)


def test_short_labels_keep_the_usual_width():
    table = format_table(metrics("gold", True), settings("gold"), [])
    # two spaces of indent, a label column of 36, the A figure right-aligned in 9
    assert a_column_ends(table) == {2 + 36 + 9}
