"""One parser of judge names (rlhfkit/judges/spec.py), shared by ``rlhfkit eval``, ``rlhfkit label`` and the
``judge:`` reward source: every form, and the one-sentence errors."""

from __future__ import annotations

import pytest

from rlhfkit.errors import UserError
from rlhfkit.judges.spec import EVAL_JUDGES, LABEL_JUDGES, REWARD_JUDGES, JudgeSpec, parse_judge_spec


@pytest.mark.parametrize(("spec", "expected"), [
    ("gold", JudgeSpec("gold", None, "gold")),
    ("ai", JudgeSpec("ai", None, "ai")),
    ("reward:runs/rm/final", JudgeSpec("reward", "runs/rm/final", "reward:runs/rm/final")),
    ("lm:models/judge", JudgeSpec("lm", "models/judge", "lm:models/judge")),
    ("lm:C:/models/judge", JudgeSpec("lm", "C:/models/judge", "lm:C:/models/judge")),  # the first colon only
])
def test_each_form_parses_to_its_kind_and_folder(spec, expected):
    assert parse_judge_spec(spec, EVAL_JUDGES) == expected


def test_each_use_accepts_its_own_judges():
    assert parse_judge_spec("simulated", LABEL_JUDGES).kind == "simulated"
    with pytest.raises(UserError, match=r"unknown judge 'simulated'; valid: gold, ai, reward:DIR, lm:DIR\."):
        parse_judge_spec("simulated", EVAL_JUDGES)
    with pytest.raises(UserError, match=r"unknown judge 'reward:rm'; valid: lm:DIR\."):
        parse_judge_spec("reward:rm", REWARD_JUDGES)


@pytest.mark.parametrize(("spec", "message"), [
    ("oracle", "unknown judge 'oracle'"),
    ("gold:x", "unknown judge 'gold:x'"),  # gold names no folder
    ("lm", "unknown judge 'lm'"),
    ("lm:", "judge lm:DIR needs the causal-LM folder after 'lm:'"),
    ("reward:", "judge reward:DIR needs the reward-model folder after 'reward:'"),
])
def test_bad_names_are_one_sentence(spec, message):
    with pytest.raises(UserError, match=message):
        parse_judge_spec(spec, LABEL_JUDGES)
