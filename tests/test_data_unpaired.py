"""Unpaired (KTO) rows: TRL's {"prompt", "completion", "label"} format, validated like the other kinds."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data import encode_sft
from rlhfkit.data.formats import DataValidationError, Message, PreferenceRow, write_rows
from rlhfkit.data.unpaired import (
    UnpairedRow,
    encode_unpaired,
    label_counts,
    load_unpaired_rows,
    unpaired_from_preferences,
    unpaired_row_to_dict,
)

try:
    from data_fixtures import tiny_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures import tiny_tokenizer


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_rows_load_typed_and_round_trip(tmp_path):
    rows = [
        {"prompt": "What is 2+2?", "completion": "4.", "label": True},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Go."}],
         "label": False, "id": 7},
    ]
    result = load_unpaired_rows(write_lines(tmp_path / "u.jsonl", rows))
    assert result.kind == "unpaired" and result.ignored_keys == {"id": 1}
    assert result.rows[0] == UnpairedRow("What is 2+2?", "4.", True)
    assert result.rows[1] == UnpairedRow([Message("user", "Hi")], [Message("assistant", "Go.")], False)
    again = load_unpaired_rows(write_rows(tmp_path / "v.jsonl", [unpaired_row_to_dict(r) for r in result.rows]))
    assert again.rows == result.rows
    assert load_unpaired_rows(rows[:1]).rows == result.rows[:1]  # a list of dicts too


def test_every_bad_row_is_one_sentence_naming_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        {"prompt": "a", "completion": "b", "label": True},
        {"prompt": "a", "completion": "b", "label": 1},
        {"prompt": "a", "completion": "b", "label": "true"},
        {"prompt": "a", "completion": "b"},
        {"prompt": "a", "completion": "  ", "label": False},
        {"prompt": "a", "completion": [{"role": "user", "content": "x"}], "label": False},
        "not json",
        {"prompt": "a", "completion": "b", "label": None},
    ])
    with pytest.raises(DataValidationError) as info:
        load_unpaired_rows(path)
    problems = info.value.problems
    assert problems == [
        f'{path} line 2, field "label": expected true (good) or false (bad), got a number.',
        f'{path} line 3, field "label": expected true (good) or false (bad), got a string.',
        f'{path} line 4, field "label": missing (the row has keys "prompt", "completion").',
        f'{path} line 5, field "completion": whitespace-only text.',
        f'{path} line 6, field "completion[0].role": a response\'s first and last messages must be the '
        'assistant\'s, got "user".',
        f"{path} line 7: invalid JSON (Expecting value at column 1).",
        f'{path} line 8, field "label": expected true (good) or false (bad), got null.',
    ]


def test_empty_text_policy_drops_and_counts(tmp_path):
    path = write_lines(tmp_path / "u.jsonl", [{"prompt": "a", "completion": "", "label": True},
                                              {"prompt": "a", "completion": "b", "label": False}])
    result = load_unpaired_rows(path, empty="drop")
    assert len(result) == 1 and result.n_dropped == 1 and "line 1" in result.dropped[0]


def test_a_dataset_missing_a_column_is_one_problem():
    class FakeDataset:  # what load_rows reads of a datasets.Dataset
        column_names = ["prompt", "completion"]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"prompt": "a", "completion": "b"}

    with pytest.raises(DataValidationError) as info:
        load_unpaired_rows(FakeDataset())
    assert info.value.problems == ['dataset, column "label": missing (the columns are "prompt", "completion").']


def test_pairs_become_one_good_and_one_bad_row_each():
    pairs = [PreferenceRow("p1", "good1", "bad1", "f line 1"), PreferenceRow("p2", "good2", "bad2")]
    rows = unpaired_from_preferences(pairs)
    assert [(r.prompt, r.completion, r.label) for r in rows] == [
        ("p1", "good1", True), ("p1", "bad1", False), ("p2", "good2", True), ("p2", "bad2", False)]
    assert rows[0].origin == "f line 1 (chosen)" and label_counts(rows) == (2, 2)


def test_encoding_matches_sft_and_keeps_each_label_with_its_row():
    tok = tiny_tokenizer("llama")
    rows = [UnpairedRow("What is 2+2?", "4.", True), UnpairedRow("x " * 60, "far too long", False),
            UnpairedRow("Hi", "Go away.", False)]
    encoded, labels, report = encode_unpaired(tok, rows, max_length=24)
    assert [e.index for e in encoded] == [0, 2] and labels == [True, False] and report.n_dropped == 1
    sft, _ = encode_sft(tok, [rows[0], rows[2]], max_length=24)
    assert [(e.prompt_ids, e.response_ids) for e in encoded] == [(e.prompt_ids, e.response_ids) for e in sft]
