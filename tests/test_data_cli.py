"""Every data format trains through the real CLI on a micro model, and a malformed row in each gets one
sentence naming the file, the line (or row) and the field, with nothing written.

One case per format: TRL's standard and conversational prompt-only, prompt-completion and preference rows
(explicit and implicit prompt), HH-RLHF transcripts, renamed columns — each in one of the file kinds (JSON
Lines, JSON, Parquet, CSV, a ``save_to_disk`` folder, a folder of data files loaded by ``datasets``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

try:
    from ppo_fixtures import save_policy_folder, save_reward_folder
    from stage_helpers import FAST_TRAIN, cli
except ImportError:  # tests/ imported as a package
    from tests.ppo_fixtures import save_policy_folder, save_reward_folder
    from tests.stage_helpers import FAST_TRAIN, cli

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

THINGS = [("cat", "black"), ("sun", "yellow"), ("river", "blue"), ("tree", "green")]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def question(thing):
    return f"what is the colour of the {thing}?"


# ----------------------------------------------------------------------------- writers: rows -> a source path


def write_jsonl(path: Path, rows) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows) -> Path:
    path = path.with_suffix(".json")
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows) -> Path:
    import csv

    path = path.with_suffix(".csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_saved_dataset(path: Path, rows) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_data_files_folder(path: Path, rows) -> Path:
    path.mkdir()
    write_jsonl(path / "train", rows)
    return path


# where the malformed row (index 1) is located, by writer
LOCATION = {write_jsonl: "line 2", write_json: "line 3", write_csv: "line 3", write_parquet: "row 1",
            write_saved_dataset: "row 1", write_data_files_folder: "row 1"}


@dataclass
class Case:
    name: str
    stage: str
    write: object
    rows: list
    bad_row: dict  # replaces rows[1]
    problem: str  # the field part of the expected sentence
    args: list = field(default_factory=list)


def sft_rows(make):
    return [make(thing, colour) for thing, colour in THINGS * 2]


CASES = [
    Case("sft: TRL prompt-completion (standard), Parquet", "sft", write_parquet,
         sft_rows(lambda t, c: {"prompt": question(t), "completion": f" the {t} is {c}."}),
         {"prompt": question("cat"), "completion": ""}, 'field "completion": empty text.'),
    Case("sft: TRL prompt-completion (conversational), JSON", "sft", write_json,
         sft_rows(lambda t, c: {"prompt": [user(question(t))], "completion": [assistant(f"the {t} is {c}.")]}),
         {"prompt": [user(question("cat"))], "completion": [user("x")]},
         'field "completion[0].role": a response\'s first and last messages must be the assistant\'s, got "user".'),
    Case("sft: renamed columns (question, answer), CSV", "sft", write_csv,
         sft_rows(lambda t, c: {"question": question(t), "answer": f"the {t} is {c}."}),
         {"question": " ", "answer": "the cat is black."}, 'field "question": whitespace-only text.',
         ["data.columns={question: prompt, answer: response}"]),
    Case("sft: HH transcripts in a text column, save_to_disk folder", "sft", write_saved_dataset,
         sft_rows(lambda t, c: {"text": f"\n\nHuman: {question(t)}\n\nAssistant: the {t} is {c}."}),
         {"text": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?"},
         'field "text[2].role": the last message must be the assistant\'s reply to learn, got "user".',
         ["data.columns={text: messages}"]),
    Case("reward: TRL implicit prompt (conversational), JSON Lines", "reward", write_jsonl,
         [{"chosen": [user(question(t)), assistant(f"the {t} is {c}.")],
           "rejected": [user(question(t)), assistant("no.")]} for t, c in THINGS * 2],
         {"chosen": [user("q"), assistant("a")], "rejected": [user("other q"), assistant("b")]},
         'field "chosen": shares no first turns with "rejected"'),
    Case("reward: HH-RLHF transcripts, folder of data files", "reward", write_data_files_folder,
         [{"chosen": f"\n\nHuman: {question(t)}\n\nAssistant: the {t} is {c}.",
           "rejected": f"\n\nHuman: {question(t)}\n\nAssistant: no."} for t, c in THINGS * 2],
         {"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"},
         'field "rejected": identical to "chosen" (the pair carries no preference signal).',
         ["data.identical=error"]),
    Case("dpo: TRL explicit prompt (conversational), Parquet", "dpo", write_parquet,
         [{"prompt": [user(question(t))], "chosen": [assistant(f"the {t} is {c}.")],
           "rejected": [assistant("no.")]} for t, c in THINGS * 2],
         {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": None}, 'field "rejected": expected'),
    Case("dpo: TRL implicit prompt (standard), JSON", "dpo", write_json,
         [{"chosen": f"{question(t)} the {t} is {c}.", "rejected": f"{question(t)} no."} for t, c in THINGS * 2],
         {"chosen": "abc", "rejected": "xyz"}, 'field "chosen": shares no start with "rejected"'),
    Case("ppo: TRL prompt-only (standard), CSV", "ppo", write_csv,
         [{"prompt": question(t)} for t, _ in THINGS * 2], {"prompt": ""}, 'field "prompt": empty text.'),
    Case("ppo: TRL prompt-only (conversational), save_to_disk folder", "ppo", write_saved_dataset,
         [{"prompt": [{"role": "system", "content": "Be brief."}, user(question(t))]} for t, _ in THINGS * 2],
         {"prompt": [{"role": "system", "content": "Be brief."}, assistant("hi")]},
         'field "prompt[1].role": the prompt ends with the assistant\'s turn'),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("formats")
    yield save_policy_folder(root), save_reward_folder(root)
    torch.set_num_threads(threads)


def stage_args(case: Case, models, source: Path, out: Path) -> list[str]:
    policy, reward = models
    common = [f"data.train_file={source}", f"train.output_dir={out}", "train.max_steps=2",
              "train.per_device_batch_size=4", *FAST_TRAIN, *case.args]
    if case.stage == "ppo":
        return ["ppo", f"model.path={policy}", f"reward_model.path={reward}", "ppo.minibatch_size=4",
                "rollout.max_new_tokens=6", "rollout.print_samples=0", "data.max_prompt_length=32",
                "data.max_length=48", *common]
    return [case.stage, f"model.path={policy}", "data.max_length=48", "data.max_prompt_length=32", *common]


def malformed(case: Case) -> list:
    rows = list(case.rows)
    rows[1] = case.bad_row
    return rows


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_malformed_row_is_one_sentence_naming_the_source_row_and_field(case, models, tmp_path, capsys):
    source = case.write(tmp_path / "data", malformed(case))
    out = tmp_path / "out"
    assert cli(stage_args(case, models, source, out)) == 2
    err = capsys.readouterr().err
    assert f"{source} {LOCATION[case.write]}, {case.problem}" in err, err
    assert "1 problem found" in err and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_format_trains_through_the_cli(case, models, tmp_path):
    source = case.write(tmp_path / "data", case.rows)
    out = tmp_path / "out"
    assert cli(stage_args(case, models, source, out)) == 0
    assert (out / "final" / "config.json").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert max(m.get("step", 0) for m in steps) == 2


def test_ppo_reports_a_bad_prompt_row_before_loading_any_model(tmp_path, capsys):
    """The rows are checked first: with model folders that do not exist, the row is still what is reported."""
    source = write_jsonl(tmp_path / "prompts", [{"prompt": "hi"}, {"prompt": None}])
    args = ["ppo", f"model.path={tmp_path / 'no-policy'}", f"reward_model.path={tmp_path / 'no-reward'}",
            f"data.train_file={source}", f"train.output_dir={tmp_path / 'out'}"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f'{source} line 2, field "prompt": expected a string or a list of messages, got null.' in err, err
