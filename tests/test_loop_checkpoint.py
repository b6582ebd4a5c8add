"""Atomic checkpoints: completeness, fallback to the previous good one, rotation, model formats."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.engine import checkpoint as ckpt


def write(output_dir, step, payload=b"x" * 100, crash_before_commit=False):
    tmp = ckpt.begin_checkpoint(output_dir, step)
    (tmp / "optimizer.pt").write_bytes(payload)
    (tmp / "model").mkdir()
    (tmp / "model" / "model.safetensors").write_bytes(payload * 2)
    if crash_before_commit:
        return tmp
    return ckpt.commit_checkpoint(tmp, step)


def names(output_dir):
    return sorted(p.name for p in output_dir.iterdir())


def test_commit_writes_a_complete_checkpoint_with_its_manifest_last(tmp_path):
    path = write(tmp_path, 4)
    assert path == tmp_path / "checkpoint-4"
    assert names(tmp_path) == ["checkpoint-4"]  # the temporary folder became the checkpoint
    manifest = ckpt.read_manifest(path)
    assert manifest["step"] == 4
    assert manifest["files"] == {"optimizer.pt": 100, "model/model.safetensors": 200}
    assert ckpt.checkpoint_problem(path) is None
    assert ckpt.find_latest_checkpoint(tmp_path) == (path, [])


@pytest.mark.parametrize("damage,reason", [
    (lambda p: (p / "manifest.json").unlink(), "no manifest"),
    (lambda p: (p / "optimizer.pt").write_bytes(b"x" * 10), "optimizer.pt has 10 bytes"),
    (lambda p: (p / "model" / "model.safetensors").unlink(), "missing file model/model.safetensors"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "unreadable manifest"),
    (lambda p: (p / "manifest.json").write_text(json.dumps({"format": "other"})), "format"),
])
def test_an_incomplete_newest_checkpoint_is_skipped_for_the_previous_good_one(tmp_path, damage, reason):
    write(tmp_path, 2)
    good = write(tmp_path, 4)
    damage(write(tmp_path, 6))
    latest, skipped = ckpt.find_latest_checkpoint(tmp_path)
    assert latest == good
    assert [p.name for p, _ in skipped] == ["checkpoint-6"]
    assert reason in skipped[0][1]


def _same_size_garbage(path, offset=-16):
    data = bytearray(path.read_bytes())
    data[offset:] = bytes(b ^ 0x5A for b in data[offset:])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["optimizer.pt", "model/model.safetensors"])
def test_a_same_size_corruption_is_caught_by_the_checksum_at_resume(tmp_path, damaged):
    good = write(tmp_path, 4)
    newest = write(tmp_path, 6)
    _same_size_garbage(newest / damaged)
    assert ckpt.checkpoint_problem(newest) is None  # the sizes alone (rotation) cannot see it
    latest, skipped = ckpt.find_latest_checkpoint(tmp_path, verify_content=True)
    assert latest == good and [p.name for p, _ in skipped] == ["checkpoint-6"]
    assert f"file {damaged} {ckpt.DAMAGED}" in skipped[0][1]


def test_the_checksum_of_a_torch_file_is_taken_while_writing_and_matches_the_bytes(tmp_path):
    tmp = ckpt.begin_checkpoint(tmp_path, 3)
    ckpt.save_torch({"moments": torch.randn(1000), "step": 3}, tmp / "optimizer.pt")
    assert ckpt._WRITTEN_CRC[str((tmp / "optimizer.pt").resolve())] == ckpt.file_crc32(tmp / "optimizer.pt")
    (tmp / "notes.txt").write_text("written by someone else")  # read back for its checksum
    path = ckpt.commit_checkpoint(tmp, 3)
    manifest = ckpt.read_manifest(path)
    assert manifest["crc32"] == {name: ckpt.file_crc32(path / name) for name in ("optimizer.pt", "notes.txt")}
    assert not ckpt._WRITTEN_CRC  # taken by the manifest
    import zlib
    assert manifest["crc32"]["notes.txt"] == f"{zlib.crc32(b'written by someone else'):08x}"  # independent


def test_a_checkpoint_without_checksums_is_still_accepted(tmp_path):
    path = write(tmp_path, 2)
    manifest = ckpt.read_manifest(path)
    del manifest["crc32"]  # written before checksums existed
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert ckpt.find_latest_checkpoint(tmp_path, verify_content=True) == (path, [])


def test_retiring_keeps_the_newest_checkpoint_without_its_optimizer_state(tmp_path):
    for step in (2, 4, 6):
        write(tmp_path, step)
    removed = ckpt.retire_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-4"]
    assert names(tmp_path) == ["checkpoint-6"]
    last = tmp_path / "checkpoint-6"
    assert not (last / "optimizer.pt").exists() and not ckpt.has_optimizer_state(last)
    assert ckpt.find_latest_checkpoint(tmp_path, verify_content=True) == (last, [])  # complete and loadable
    assert ckpt.retire_checkpoints(tmp_path) == [] and names(tmp_path) == ["checkpoint-6"]  # idempotent


def test_a_kill_while_retiring_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    write(tmp_path, 2)
    last = write(tmp_path, 4)

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # as if SIGKILL came between the manifest rewrite and the deletion

    monkeypatch.setattr(type(last / "optimizer.pt"), "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.retire_checkpoints(tmp_path)
    monkeypatch.undo()
    # the manifest already says "no optimizer"; the file is still there, unlisted: the checkpoint loads
    assert (last / "optimizer.pt").exists() and not ckpt.has_optimizer_state(last)
    assert ckpt.find_latest_checkpoint(tmp_path, verify_content=True) == (last, [])
    ckpt.retire_checkpoints(tmp_path)  # the next run's retirement finishes the job
    assert not (last / "optimizer.pt").exists()


def test_no_complete_checkpoint_at_all(tmp_path):
    assert ckpt.find_latest_checkpoint(tmp_path / "missing") == (None, [])
    (write(tmp_path, 3) / "manifest.json").unlink()
    latest, skipped = ckpt.find_latest_checkpoint(tmp_path)
    assert latest is None and len(skipped) == 1


def test_a_crash_during_save_keeps_the_previous_checkpoints(tmp_path):
    for step in (2, 4):
        write(tmp_path, step)
        ckpt.rotate_checkpoints(tmp_path, keep=2)
    write(tmp_path, 6, crash_before_commit=True)  # killed before the manifest/rename: no rotation ran
    assert names(tmp_path) == [".tmp-checkpoint-6", "checkpoint-2", "checkpoint-4"]
    assert ckpt.find_latest_checkpoint(tmp_path)[0].name == "checkpoint-4"
    # the next run cleans the leftover and can write step 6 again
    assert [p.name for p in ckpt.remove_stale_temporaries(tmp_path)] == [".tmp-checkpoint-6"]
    write(tmp_path, 6)
    ckpt.rotate_checkpoints(tmp_path, keep=2, protect=tmp_path / "checkpoint-6")
    assert names(tmp_path) == ["checkpoint-4", "checkpoint-6"]


def test_rotation_keeps_the_newest_complete_and_drops_older_incomplete(tmp_path):
    for step in (1, 2, 3, 5):
        write(tmp_path, step)
    (tmp_path / "checkpoint-2" / "manifest.json").unlink()  # incomplete, older than the newest
    (write(tmp_path, 9) / "manifest.json").unlink()  # incomplete, newer: left alone (resume skips it)
    removed = ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-2"]
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-5", "checkpoint-9"]
    ckpt.rotate_checkpoints(tmp_path, keep=1, protect=tmp_path / "checkpoint-3")
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-5", "checkpoint-9"]  # protected survives


def test_commit_replaces_an_incomplete_leftover_of_the_same_step(tmp_path):
    (write(tmp_path, 8) / "manifest.json").unlink()
    path = write(tmp_path, 8, payload=b"y" * 7)
    assert ckpt.checkpoint_problem(path) is None
    assert (path / "optimizer.pt").read_bytes() == b"y" * 7
    assert names(tmp_path) == ["checkpoint-8"]


# ----------------------------------------------------------------------------- model formats


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # a shared tensor, stored once


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_plain_module_round_trips_as_safetensors(tmp_path):
    torch.manual_seed(0)
    source, target = perturbed(Tied()), Tied()
    assert ckpt.save_model(source, tmp_path) == "state_dict"
    ckpt.load_model(target, tmp_path, "state_dict")
    assert_same_state(source, target)
    assert target.head.weight is target.embed.weight  # still tied after loading


@pytest.fixture(scope="module")
def tokenizer():
    from rlhfkit.models.tiny import train_tokenizer

    return train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 5, vocab_size=280)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])  # gpt_neox renames keys on save in transformers 5
def test_transformers_model_round_trips_as_a_standard_folder(tmp_path, tokenizer, arch):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.tiny import build_tiny_model

    source = perturbed(build_tiny_model(arch, "micro", tokenizer, seed=0))
    target = build_tiny_model(arch, "micro", tokenizer, seed=1)
    optimizer_params = list(target.parameters())
    assert ckpt.save_model(source, tmp_path, tokenizer) == "transformers"
    ckpt.load_model(target, tmp_path, "transformers")
    assert_same_state(source, target)
    assert all(a is b for a, b in zip(optimizer_params, target.parameters()))  # optimizer stays valid
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers reads the folder
    assert_same_state(source, plain)
    assert (tmp_path / "tokenizer.json").exists()


def test_peft_adapter_round_trips(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    from rlhfkit.models.tiny import build_tiny_model

    def lora_model():
        base = build_tiny_model("llama", "micro", tokenizer, seed=0)
        return peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))

    source, target = lora_model(), lora_model()
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    assert ckpt.save_model(source, tmp_path) == "peft"
    assert (tmp_path / "adapter_config.json").exists() and not (tmp_path / "model.safetensors").exists()
    ckpt.load_model(target, tmp_path, "peft")
    assert_same_state(source, target)
    with pytest.raises(ckpt.CheckpointError, match="same model setup"):
        ckpt.load_model(Tied(), tmp_path, "peft")


def test_save_folder_atomically_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "final"
    ckpt.save_folder_atomically(target, lambda tmp: (tmp / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"

    def broken(tmp):
        (tmp / "a.txt").write_text("two, half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_folder_atomically(target, broken)
    assert (target / "a.txt").read_text() == "one"  # the previous folder is intact
    ckpt.save_folder_atomically(target, lambda tmp: (tmp / "b.txt").write_text("three"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporaries left
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_leftovers_of_a_killed_final_export_are_removed_by_the_next_run(tmp_path):
    import os
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (tmp_path / f".tmp-final-{dead}").mkdir()  # killed during the export, before the rename
    (tmp_path / f".tmp-value_model-{dead}").mkdir()
    (tmp_path / f".old-final-{dead}").mkdir()  # killed between the two renames, then final/ rewritten
    (tmp_path / "final").mkdir()
    (tmp_path / f".old-lonely-{dead}").mkdir()  # killed between the renames: the only copy of lonely/
    (tmp_path / f".tmp-final-{os.getpid()}").mkdir()  # a writer still running
    removed = ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".tmp-final-{dead}", f".tmp-value_model-{dead}",
                                                      f".old-final-{dead}"])
    assert names(tmp_path) == sorted([".old-lonely-" + str(dead), ".tmp-final-" + str(os.getpid()), "final"])
    # and a save of final/ cleans its own name's leftovers
    (tmp_path / f".tmp-final-{dead}").mkdir()
    ckpt.save_folder_atomically(tmp_path / "final", lambda tmp: (tmp / "a.txt").write_text("x"))
    assert not (tmp_path / f".tmp-final-{dead}").exists()
