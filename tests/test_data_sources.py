"""Rows from every kind of source — JSON Lines, JSON, Parquet, CSV, ``datasets`` folders — with problems
located by file and line (or row) and field, and sources that cannot be opened named in one sentence."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data.formats import DataValidationError, SFTRow, load_rows, peek_keys

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

ROWS = [{"prompt": "2+2?", "completion": "4."}, {"prompt": "3+3?", "completion": ""}, {"prompt": "1+1?",
                                                                                      "completion": "2."}]
EXPECTED_PROBLEM = 'field "completion": empty text.'


def problems(source, kind="sft", **kwargs):
    with pytest.raises(DataValidationError) as info:
        load_rows(source, kind, **kwargs)
    return info.value.problems


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_by_suffix_and_by_content(tmp_path):
    path = write_parquet(tmp_path / "rows.parquet", ROWS)
    assert problems(path) == [f"{path} row 1, {EXPECTED_PROBLEM}"]
    # the case: a Parquet file whose name says JSON Lines was read as text (invalid UTF-8)
    disguised = write_parquet(tmp_path / "rows.jsonl", ROWS[:1])
    assert load_rows(disguised, "sft").rows == [SFTRow("2+2?", "4.")]


def test_json_array_rows_are_located_by_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in ROWS) + "\n]\n")
    assert problems(path) == [f"{path} line 3, {EXPECTED_PROBLEM}"]
    path.write_text('[{"prompt": "a", "completion": "b"}\n {"prompt": "c"}]')
    (p,) = problems(path)
    assert p.startswith(f"{path} line 2: invalid JSON (expected ',' or ']' between rows)")


def test_csv_rows_are_located_by_the_line_their_record_starts_on(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\n"a question\nover two lines",4.\n3+3?,\n1+1?,2.\n', encoding="utf-8")
    assert problems(path) == [f"{path} line 4, {EXPECTED_PROBLEM}"]
    path.write_text("prompt,completion\n2+2?,4.\n3+3?\n")
    assert problems(path) == [f"{path} line 3: 1 values for the 2 columns of the header."]
    path.write_text("question,answer\n2+2?,4.\n")
    assert load_rows(path, "sft", columns={"question": "prompt", "answer": "response"}).rows == [SFTRow("2+2?", "4.")]


def test_a_missing_column_of_a_table_is_one_sentence(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,reply\na,b\nc,d\n")
    assert problems(path) == [f'{path}, column "response": missing (the columns are "prompt", "reply").']


def test_save_to_disk_folders_and_splits(tmp_path):
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    assert problems(folder) == [f"{folder} row 1, {EXPECTED_PROBLEM}"]
    both = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(str(both))
    assert load_rows(both, "sft").rows == [SFTRow("2+2?", "4.")]  # train by default
    assert load_rows(f"{both}[test]", "sft").rows == [SFTRow("1+1?", "2.")]
    assert problems(f"{both}[dev]") == [f"{both}[dev]: choose a split by writing SOURCE[split] (its splits: "
                                        "train, test)."]


def test_a_folder_of_data_files_loads_through_datasets(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    write_parquet(folder / "train.parquet", ROWS[:1])
    write_parquet(folder / "test.parquet", ROWS[2:])
    assert load_rows(folder, "sft").rows == [SFTRow("2+2?", "4.")]
    assert load_rows(f"{folder}[test]", "sft").rows == [SFTRow("1+1?", "2.")]


def test_sources_that_cannot_be_opened_are_one_sentence(tmp_path):
    assert problems(tmp_path / "nope.parquet") == [f"{tmp_path / 'nope.parquet'}: file not found."]
    (tmp_path / "data").mkdir()
    typo = tmp_path / "data" / "prefs"  # a mistyped path inside a real folder is not tried as a Hub name
    assert problems(str(typo)) == [f"{typo}: file not found."]
    empty = tmp_path / "empty"
    empty.mkdir()
    (p,) = problems(empty)
    assert p.startswith(f"{empty}: a folder that datasets cannot load (")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    (p,) = problems(bad)
    assert p.startswith(f"{bad}: not a readable Parquet file (")


def test_peek_keys_sees_the_first_row_of_any_source(tmp_path):
    path = write_parquet(tmp_path / "r.parquet", ROWS)
    assert peek_keys(path) == {"prompt", "completion"}
    assert peek_keys([{"q": 1}], {"q": "prompt"}) == {"prompt"}
    assert peek_keys(tmp_path / "missing.jsonl") == frozenset()


def test_csv_blank_lines_are_skipped_but_a_row_of_empty_cells_is_reported(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('prompt\nhello\n\n""\nworld\n', encoding="utf-8")
    assert problems(path, "prompt") == [f'{path} line 4, field "prompt": empty text.']


OFFLINE_NAME_SCRIPT = r"""
import glob, json, os, shutil, sys
import datasets
from rlhfkit.data import DataValidationError, load_rows

work = sys.argv[1]
with open(os.path.join(work, "train.jsonl"), "w") as f:
    f.write(json.dumps({"prompt": "2+2?", "completion": "4."}) + "\n")
datasets.load_dataset("json", data_files={"train": os.path.join(work, "train.jsonl")}, split="train")
# what a download of the Hub dataset "someone/demos" leaves in the datasets cache: the prepared json build,
# filed under that name (datasets' own cache layout)
cache = str(datasets.config.HF_DATASETS_CACHE)
built = glob.glob(os.path.join(cache, "json", "*"))
if not built:
    print("SKIP: this datasets version keeps its cache elsewhere")
    sys.exit(0)
shutil.copytree(built[0], os.path.join(cache, "someone___demos", "default"))
for arrow in glob.glob(os.path.join(cache, "someone___demos", "**", "json-*.arrow"), recursive=True):
    os.rename(arrow, arrow.replace(os.sep + "json-", os.sep + "demos-"))
print(load_rows("someone/demos[train]", "sft").rows[0].response)
try:
    load_rows("someone/absent", "sft")
except DataValidationError as exc:
    print(exc.problems[0])
"""


def test_a_datasets_name_loads_offline_from_the_cache_and_an_unknown_name_is_one_sentence(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", OFFLINE_NAME_SCRIPT, str(tmp_path)], env=env, text=True,
                         capture_output=True, check=True).stdout.splitlines()
    if out and out[0].startswith("SKIP"):
        pytest.skip(out[0])
    assert out[0] == "4."
    assert out[1].startswith("someone/absent: no such file or folder, and datasets cannot load it as a dataset "
                             "name (")
