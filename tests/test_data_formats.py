"""Loading and validating the four row formats: every bad input names file, line and field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhfkit.data.formats import (
    MAX_LISTED_PROBLEMS,
    DataValidationError,
    Message,
    PreferenceRow,
    PromptRow,
    RankingRow,
    SFTRow,
    load_rows,
    row_to_dict,
    write_rows,
)

GOOD = {
    "sft": {"prompt": "What is 2+2?", "response": "4."},
    "preference": {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    "ranking": {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
    "prompt": {"prompt": "Tell me a story."},
}


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def problems_of(path, kind, **kwargs):
    with pytest.raises(DataValidationError) as info:
        load_rows(path, kind, **kwargs)
    return info.value.problems


# (kind, bad JSON object on line 2, field named, words the sentence must contain)
BAD_ROWS = [
    ("preference", {"prompt": "Hi", "rejected": "no"}, "chosen", "missing"),
    ("preference", {"prompt": "Hi", "chosen": None, "rejected": "no"}, "chosen", "got null"),
    ("preference", {"prompt": "Hi", "chosen": 3, "rejected": "no"}, "chosen", "got a number"),
    ("preference", {"prompt": "Hi", "chosen": {"text": "x"}, "rejected": "no"}, "chosen", "got an object"),
    ("preference", {"prompt": "Hi", "chosen": "", "rejected": "no"}, "chosen", "empty text"),
    ("preference", {"prompt": " \n\t", "chosen": "a", "rejected": "no"}, "prompt", "whitespace-only text"),
    (
        "preference",
        {"prompt": "Hi", "chosen": "same", "rejected": "same "},
        "rejected",
        'identical to "chosen"',
    ),
    (
        "preference",
        {"prompt": [{"role": "human", "content": "Hi"}], "chosen": "a", "rejected": "b"},
        "prompt[0].role",
        'unknown role "human"',
    ),
    (
        "preference",
        {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
        "prompt[0].content",
        "missing",
    ),
    (
        "preference",
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "chosen": "a",
            "rejected": "b",
        },
        "prompt[1].role",
        "ends with the assistant's turn",
    ),
    (
        "preference",
        {"prompt": "Hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        "chosen[0].role",
        "must be the assistant's",
    ),
    ("preference", {"prompt": "Hi", "chosen": [], "rejected": "b"}, "chosen", "empty list of messages"),
    (
        "preference",
        {"prompt": "Hi", "chosen": ["a"], "rejected": "b"},
        "chosen[0]",
        "expected a message object",
    ),
    ("preference", {"prompt": "\ud800", "chosen": "a", "rejected": "b"}, "prompt", "unpaired surrogate"),
    (
        "ranking",
        {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]},
        "ranking",
        "not a permutation",
    ),
    (
        "ranking",
        {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [0, 1, 3]},
        "ranking",
        "not a permutation",
    ),
    (
        "ranking",
        {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [0, 1]},
        "ranking",
        "not a permutation",
    ),
    ("ranking", {"prompt": "Hi", "responses": ["a", "b"], "ranking": [0, "1"]}, "ranking[1]", "got a string"),
    (
        "ranking",
        {"prompt": "Hi", "responses": ["a", "b"], "ranking": [True, 0]},
        "ranking[0]",
        "got a boolean",
    ),
    ("ranking", {"prompt": "Hi", "responses": ["a"], "ranking": [0]}, "responses", "at least 2 responses"),
    ("ranking", {"prompt": "Hi", "responses": "ab", "ranking": [0, 1]}, "responses", "got a string"),
    (
        "ranking",
        {"prompt": "Hi", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]},
        "responses",
        "responses 0 and 2 are identical",
    ),
    ("ranking", {"prompt": "Hi", "responses": ["a", ""], "ranking": [0, 1]}, "responses[1]", "empty text"),
    ("sft", {"prompt": "Hi"}, "response", "missing"),
    (
        "sft",
        {"messages": [{"role": "user", "content": "Hi"}]},
        "messages[0].role",
        "must be the assistant's reply",
    ),
    (
        "sft",
        {"messages": [{"role": "assistant", "content": "Hi"}]},
        "messages",
        "at least one message before",
    ),
    ("sft", {"messages": "Hi"}, "messages", "expected a list of messages"),
    (
        "sft",
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "prompt": "q",
        },
        "messages",
        "use one form or the other",
    ),
    (
        "sft",
        {"messages": [{"role": "user", "content": "q"}, {"role": 7, "content": "a"}]},
        "messages[1].role",
        "expected a string, got a number",
    ),
    ("prompt", {"prompt": None}, "prompt", "got null"),
    ("prompt", {"text": "Hi"}, "prompt", 'missing (the row has keys "text")'),
]


@pytest.mark.parametrize("kind, bad, field, words", BAD_ROWS, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in BAD_ROWS])
def test_bad_row_names_file_line_and_field(tmp_path, kind, bad, field, words):
    path = write_lines(
        tmp_path / "data.jsonl", [json.dumps(GOOD[kind]), json.dumps(bad), json.dumps(GOOD[kind])]
    )
    problems = problems_of(path, kind)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f'{path} line 2, field "{field}": '), problems[0]
    assert words in problems[0]
    assert problems[0].endswith(".") and problems[0].count("\n") == 0


def test_the_sentence_of_the_brief(tmp_path):
    lines = [json.dumps(GOOD["preference"])] * 6 + [
        json.dumps({"prompt": "Hi", "chosen": "", "rejected": "x"})
    ]
    path = write_lines(tmp_path / "prefs.jsonl", lines)
    assert problems_of(path, "preference") == [f'{path} line 7, field "chosen": empty text.']


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"prompt": "Hi", "chosen": "a", "rejected": "b"', "invalid JSON"),
        (b'{"prompt": "caf\xe9"}', "invalid UTF-8 (byte 0xe9"),
        (b'["a", "b"]', "expected a JSON object, got a list"),
        (b'"just text"', "expected a JSON object, got a string"),
        (b"42", "expected a JSON object, got a number"),
    ],
)
def test_unreadable_line_names_file_and_line(tmp_path, raw, words):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD["prompt"]), raw])
    problems = problems_of(path, "prompt")
    assert len(problems) == 1
    assert problems[0].startswith(f"{path} line 2: ") and words in problems[0], problems[0]


def test_every_problem_of_the_file_is_listed(tmp_path):
    lines = [json.dumps(GOOD["preference"])]
    lines += [json.dumps({"prompt": "Hi", "chosen": "", "rejected": None})]  # line 2: two problems
    lines += [b"{nope", json.dumps(GOOD["preference"]), b"\xff"]  # lines 3, 5
    lines += [json.dumps({"prompt": "Hi", "chosen": "a"})]  # line 6
    path = write_lines(tmp_path / "p.jsonl", lines)
    problems = problems_of(path, "preference")
    located = [p.split(":")[0] for p in problems]
    assert located == [
        f'{path} line 2, field "chosen"',
        f'{path} line 2, field "rejected"',
        f"{path} line 3",
        f"{path} line 5",
        f'{path} line 6, field "rejected"',
    ]


def test_message_lists_the_first_problems_and_the_count(tmp_path):
    n_bad = MAX_LISTED_PROBLEMS + 7
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": ""})] * n_bad)
    with pytest.raises(DataValidationError) as info:
        load_rows(path, "prompt")
    error = info.value
    assert isinstance(error, ValueError)
    assert len(error.problems) == n_bad
    message = str(error)
    assert f"{n_bad} problems" in message
    assert f"line {MAX_LISTED_PROBLEMS}," in message and f"line {MAX_LISTED_PROBLEMS + 1}," not in message
    assert f"7 more ({n_bad} in all)" in message


def test_empty_file_blank_lines_and_missing_file(tmp_path):
    for content in (b"", b"\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        assert problems_of(path, "sft") == [f"{path}: no rows (an empty file or dataset)."]
    missing = tmp_path / "nope.jsonl"
    assert problems_of(missing, "sft") == [f"{missing}: file not found."]


def test_json_array_file_is_read_and_a_bad_row_is_named_by_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([GOOD["prompt"], {"prompt": ""}], indent=2))
    (problem,) = problems_of(path, "prompt")
    assert problem == f'{path} line 5, field "prompt": empty text.'  # "[", "{", prompt, "}," then the row
    path.write_text(json.dumps([GOOD["prompt"], GOOD["prompt"]], indent=2))
    assert len(load_rows(path, "prompt")) == 2


def test_blank_lines_bom_and_crlf_are_accepted(tmp_path):
    body = "\ufeff" + json.dumps(GOOD["sft"]) + "\r\n\r\n" + json.dumps(GOOD["sft"]) + "\r\n\n"
    path = tmp_path / "sft.jsonl"
    path.write_bytes(body.encode())
    result = load_rows(path, "sft")
    assert len(result) == 2 and result.n_read == 2 and result.n_blank_lines == 2
    assert result.rows[1].origin == f"{path} line 3"


def test_string_and_message_forms_give_typed_rows(tmp_path):
    user = {"role": "user", "content": "Hi"}
    lines = [
        {"prompt": "Hi", "response": "Hello"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                user,
                {"role": "assistant", "content": "Yo"},
            ]
        },
    ]
    rows = load_rows(write_lines(tmp_path / "s.jsonl", [json.dumps(x) for x in lines]), "sft").rows
    assert rows[0] == SFTRow("Hi", "Hello")
    assert rows[1] == SFTRow([Message("system", "Be brief."), Message("user", "Hi")], "Yo")

    prefs = [{"prompt": [user], "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}]
    (pref,) = load_rows(prefs, "preference").rows
    assert pref == PreferenceRow([Message("user", "Hi")], [Message("assistant", "A")], "B")
    assert load_rows([GOOD["ranking"]], "ranking").rows == [RankingRow("Hi", ["a", "b", "c"], [2, 0, 1])]
    assert load_rows([{"prompt": [user]}], "prompt").rows == [PromptRow([Message("user", "Hi")])]


def test_unknown_keys_are_ignored_and_counted():
    rows = [dict(GOOD["preference"], id=i, meta={"annotator": "x"}) for i in range(3)]
    rows[0]["chosen_score"] = 0.3
    result = load_rows(rows, "preference")
    assert len(result) == 3
    assert result.ignored_keys == {"id": 3, "meta": 3, "chosen_score": 1}
    assert '"chosen_score" ×1' in result.summary()


@pytest.mark.parametrize(
    "option, bad",
    [
        ("empty", {"prompt": "Hi", "chosen": " ", "rejected": "b"}),
        ("identical", {"prompt": "Hi", "chosen": "b", "rejected": "b"}),
    ],
)
def test_warn_and_drop_policies_count_and_report(option, bad):
    rows = [GOOD["preference"], bad, GOOD["preference"]]
    warned = load_rows(rows, "preference", **{option: "warn"})
    assert len(warned) == 3 and warned.n_warned == 1 and warned.n_dropped == 0
    assert len(warned.warnings) == 1 and warned.warnings[0].startswith("<list> row 1, field")
    assert "1 kept with warnings" in warned.summary()

    dropped = load_rows(rows, "preference", **{option: "drop"})
    assert len(dropped) == 2 and dropped.n_dropped == 1 and dropped.n_warned == 0
    assert dropped.dropped[0].startswith("<list> row 1, field")
    assert "1 dropped" in dropped.summary()

    with pytest.raises(DataValidationError):
        load_rows(rows, "preference")  # the default is "error"


def test_policies_never_excuse_a_hard_error_and_dropping_everything_fails():
    rows = [{"prompt": "", "chosen": None, "rejected": "b"}]
    with pytest.raises(DataValidationError, match="got null"):
        load_rows(rows, "preference", empty="drop")
    with pytest.raises(DataValidationError, match="all 1 rows were dropped"):
        load_rows([{"prompt": " "}], "prompt", empty="drop")
    with pytest.raises(ValueError, match="valid: error, warn, drop"):
        load_rows([GOOD["prompt"]], "prompt", empty="ignore")
    with pytest.raises(ValueError, match="valid: sft, preference, ranking, prompt"):
        load_rows([GOOD["prompt"]], "prompts")


def test_datasets_rows_are_named_by_dataset_and_index():
    from datasets import Dataset

    rows = [
        GOOD["preference"],
        {"prompt": "Hi", "chosen": "", "rejected": "b"},
        {"prompt": "Hi", "chosen": "x", "rejected": None},
    ]
    dataset = Dataset.from_list(rows)
    with pytest.raises(DataValidationError) as info:
        load_rows(dataset, "preference", name="hh-rlhf")
    assert info.value.problems == [
        'dataset "hh-rlhf" row 1, field "chosen": empty text.',
        'dataset "hh-rlhf" row 2, field "rejected": expected a string or a list of messages, got null.',
    ]
    good = load_rows(Dataset.from_list([GOOD["preference"]] * 2), "preference")
    assert good.rows == [PreferenceRow("Hi", "Hello!", "Go away.")] * 2
    assert good.rows[1].origin == "dataset row 1"


def test_datasets_message_lists_and_missing_columns():
    from datasets import Dataset, DatasetDict

    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    dataset = Dataset.from_list([{"messages": conv, "id": 1}])
    assert load_rows(dataset, "sft").rows == [SFTRow([Message("user", "Hi")], "Yo")]

    no_chosen = Dataset.from_list([{"prompt": "Hi", "rejected": "b"}] * 50)
    with pytest.raises(DataValidationError) as info:
        load_rows(no_chosen, "preference", name="mine")
    assert info.value.problems == [
        'dataset "mine", column "chosen": missing (the columns are "prompt", "rejected").'
    ]
    with pytest.raises(TypeError, match="DatasetDict with splits train"):
        load_rows(DatasetDict({"train": dataset}), "sft")


def test_rows_round_trip_through_jsonl(tmp_path):
    rows = load_rows(
        [
            GOOD["preference"],
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "A"}],
                "rejected": "B",
            },
        ],
        "preference",
    ).rows
    path = write_rows(tmp_path / "out" / "p.jsonl", rows)
    assert load_rows(path, "preference").rows == rows
    assert row_to_dict(rows[1])["chosen"] == [{"role": "assistant", "content": "A"}]
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_formats_never_imports_torch_or_datasets():
    code = (
        "import sys, rlhfkit.data, rlhfkit.data.formats, rlhfkit.data.rankings, rlhfkit.data.encode;"
        "bad = [m for m in ('torch', 'datasets', 'transformers') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
