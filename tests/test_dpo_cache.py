"""The reference cache: reused when nothing changed, never when the data, weights, tokenizer or settings did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main as cli
from rlhfkit.data import encode_preference, load_rows
from rlhfkit.data.collate import pad_token_id_for
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.trainers.reference_cache import (
    FORMAT,
    CacheContext,
    cached_reference_logps,
    compute_reference_logps,
    tokenizer_fingerprint,
    weights_fingerprint,
)

try:
    from test_dpo_common import cli_args, learnable_rows, make_data, model_dir, tokenizer, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import cli_args, learnable_rows, make_data, model_dir, tokenizer, write_jsonl

SETTINGS = {"max_length": 64, "max_prompt_length": 32, "template": None, "data_kind": "preference"}


class Run:
    """One lookup as the trainer does it: encode the file, hash, read the cache or compute (counted)."""

    def __init__(self, root: Path):
        self.root, self.computed = root, 0

    def __call__(self, data_file: Path, model, tok, settings=SETTINGS):
        rows = load_rows(data_file, "preference").rows
        examples, _ = encode_preference(tok, rows, max_length=settings["max_length"],
                                        max_prompt_length=settings["max_prompt_length"])
        context = CacheContext(settings, tokenizer_fingerprint(tok), weights_fingerprint(model))

        def compute():
            self.computed += 1
            return compute_reference_logps(model, examples, pad_token_id=pad_token_id_for(tok), batch_size=4)

        return cached_reference_logps(data_file, examples, context, compute, cache_dir=self.root / "cache")


@pytest.fixture()
def world(tmp_path):
    folder = model_dir(tmp_path)
    data = write_jsonl(tmp_path / "data" / "prefs.jsonl", learnable_rows(10, seed=3))
    return Run(tmp_path), data, load_causal_lm(folder), load_tokenizer(folder)


def test_a_second_lookup_reads_the_cache_written_atomically_in_the_cache_folder(world):
    run, data, model, tok = world
    first = run(data, model, tok)
    second = run(data, model, tok)
    assert (first.hit, second.hit, run.computed) == (False, True, 1)
    assert first.path == second.path and first.path.parent == run.root / "cache"
    assert [p.name for p in data.parent.iterdir()] == [data.name]  # nothing written beside the data
    torch.testing.assert_close(second.table.chosen, first.table.chosen, rtol=0, atol=0)
    torch.testing.assert_close(second.table.rejected, first.table.rejected, rtol=0, atol=0)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temporary file left
    from safetensors import safe_open

    with safe_open(str(first.path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and len(meta["key"]) == 64 and json.loads(meta["parts"])["reference"]


def test_changing_one_data_row_misses_and_recomputes(world):
    run, data, model, tok = world
    before = run(data, model, tok)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[7]["rejected"] += " far"
    write_jsonl(data, rows)
    after = run(data, model, tok)
    assert (after.hit, run.computed) == (False, 2) and after.path != before.path
    assert float(after.table.rejected[7]) != float(before.table.rejected[7])
    assert torch.equal(after.table.chosen, before.table.chosen)  # the other values are the same numbers


def test_changing_one_weight_misses_and_recomputes(world):
    run, data, model, tok = world
    run(data, model, tok)
    last = list(model.parameters())[-1]  # a single element, far from the start of the state dict
    with torch.no_grad():
        last.view(-1)[-1] += 1e-3
    assert not run(data, model, tok).hit and run.computed == 2
    with torch.no_grad():
        last.view(-1)[-1] -= 1e-3
    assert run(data, model, tok).hit  # the first entry is still valid for the original weights


def test_the_same_weights_loaded_from_another_folder_hit(world, tmp_path):
    run, data, model, tok = world
    run(data, model, tok)
    moved = tmp_path / "elsewhere"
    model.save_pretrained(moved)
    assert run(data, load_causal_lm(moved), tok).hit


def test_another_tokenizer_or_max_length_misses(world):
    run, data, model, tok = world
    run(data, model, tok)
    other = tokenizer("llama")  # the same size of vocabulary, other ids and a BOS
    assert len(other) == model.config.vocab_size
    assert not run(data, model, other).hit
    assert not run(data, model, tok, {**SETTINGS, "max_length": 63}).hit
    assert not run(data, model, tok, {**SETTINGS, "max_prompt_length": 31}).hit
    assert run.computed == 4


def test_a_damaged_cache_file_is_a_miss_and_is_rewritten(world):
    run, data, model, tok = world
    first = run(data, model, tok)
    first.path.write_bytes(first.path.read_bytes()[:40])  # a torn file
    again = run(data, model, tok)
    assert not again.hit and again.written and run.computed == 2
    assert run(data, model, tok).hit


def test_the_cli_reuses_a_shared_cache_across_runs_and_not_after_a_data_change(tmp_path, capsys):
    make_data(tmp_path, n_train=16, n_eval=8)
    shared = f"reference_cache_dir={tmp_path / 'shared-cache'}"
    assert cli(cli_args(tmp_path, "a", "train.max_steps=1", shared)) == 0
    assert "computed, cached in" in capsys.readouterr().err
    assert cli(cli_args(tmp_path, "b", "train.max_steps=1", shared)) == 0
    err = capsys.readouterr().err
    assert err.count("read from") == 2  # train and eval tables
    write_jsonl(tmp_path / "train.jsonl", learnable_rows(16, seed=1)[::-1])  # same rows, another order
    assert cli(cli_args(tmp_path, "c", "train.max_steps=1", shared)) == 0
    err = capsys.readouterr().err
    assert "dpo train: reference log-probs of 16 pairs computed" in err and "dpo eval" in err


def test_the_default_cache_lives_in_the_run_folder_never_beside_the_data(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    make_data(data, n_train=16, n_eval=8)
    cli_args(data, "../run")  # builds the model folder before the data folder turns read-only
    data.chmod(0o555)  # a read-only dataset folder (root ignores that: the listing below is the check)
    try:
        assert cli(cli_args(data, "../run", "train.max_steps=1")) == 0
        assert "computed, cached in" in capsys.readouterr().err
        assert sorted(p.name for p in data.iterdir()) == ["eval.jsonl", "model-llama-world-0", "train.jsonl"]
        cached = sorted(p.name for p in (tmp_path / "run" / "reference_cache").iterdir())
        assert [n.split(".ref-")[0] for n in cached] == ["eval.jsonl", "train.jsonl"]
        # the same run again (already complete) finds its tables in its own folder
        assert cli(cli_args(data, "../run", "train.max_steps=1")) == 0
        assert capsys.readouterr().err.count("read from") == 2
    finally:
        data.chmod(0o755)


def test_a_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(world):
    import subprocess
    import sys

    run, data, model, tok = world
    first = run(data, model, tok)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftover = first.path.parent / f".{first.path.name}.pid{dead}.abc123.tmp"  # 0 bytes, as a kill leaves it
    live = first.path.parent / f".{first.path.name}.pid{os.getpid()}.def456.tmp"  # a writer still running
    leftover.touch()
    live.touch()
    assert run(data, model, tok).hit  # a lookup that hits cleans up too
    assert not leftover.exists() and live.exists()
    leftover.touch()
    first.path.unlink()
    assert not run(data, model, tok).hit  # and so does a write
    assert not leftover.exists() and live.exists()
