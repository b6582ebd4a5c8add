"""Kill-and-resume of ``rlhfkit sft`` with real processes: SIGKILL mid-run, the same command again, and the run
ends exactly where an uninterrupted one does (per-step losses, final weights, optimizer moments)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

try:
    from stage_helpers import colour_rows, model_dir, read_metrics, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import colour_rows, model_dir, read_metrics, write_jsonl

# The real CLI in a fresh process; only when SFT_TEST_KILL_AFTER_STEP is set does the process SIGKILL
# itself right after finishing that step (its log line written, any checkpoint due written), before the
# next step — the moment a power cut would leave it.
ENTRY = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from rlhfkit.engine import loop
kill_after = os.environ.get("SFT_TEST_KILL_AFTER_STEP")
if kill_after:
    original = loop.TrainLoop.finish_step
    def finish_step_then_die(self, metrics=None):
        original(self, metrics)
        if self.step == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
    loop.TrainLoop.finish_step = finish_step_then_die
from rlhfkit.engine import checkpoint as ckpt
kill_at = os.environ.get("SFT_TEST_KILL_AT")
if kill_at == "final_export":  # final/'s files written into .tmp-final-PID, not yet renamed
    original_fsync = ckpt._fsync_tree
    def fsync_then_die(root):
        original_fsync(root)
        if root.name.startswith(".tmp-final-"):
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt._fsync_tree = fsync_then_die
if kill_at == "retire":  # the manifest says "no optimizer", optimizer.pt not yet deleted
    original_manifest = ckpt._write_manifest_file
    def manifest_then_die(folder, manifest):
        original_manifest(folder, manifest)
        if manifest.get("optimizer") is False:
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt._write_manifest_file = manifest_then_die
from rlhfkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(args, kill_after=None, kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SFT_TEST_KILL_AFTER_STEP", None)
    env.pop("SFT_TEST_KILL_AT", None)
    if kill_after is not None:
        env["SFT_TEST_KILL_AFTER_STEP"] = str(kill_after)
    if kill_at is not None:
        env["SFT_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=300)


CASES = {
    # 20 examples, 4 per step: 5 steps per epoch, 15 in all. Resumes from step 6: epoch 1, example 4.
    "full, mid-epoch": (["train.save_every=2"], 7, "epoch 1, example 4 of 20"),
    # NEFTune draws its noise from torch's global generator, which the checkpoint carries.
    "full with NEFTune noise, mid-epoch": (["train.save_every=2", "neftune_alpha=5"], 7, "epoch 1, example 4 of 20"),
    # 20 examples packed into 14 rows of ≤ 40 tokens, 4 rows per step: 4 steps per epoch (the last one
    # ragged), 12 in all. Resumes from step 4, the end of epoch 0. LoRA dropout makes the torch RNG matter.
    "lora with dropout, packed, at an epoch boundary": (
        ["train.save_every=4", "lora.enabled=true", "lora.r=4", "lora.dropout=0.1", "packing=true",
         "data.max_length=40"], 6, "epoch 1, example 0 of 14"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sft_killed_and_rerun_ends_like_an_uninterrupted_run(tmp_path, case):
    extra, kill_after, resume_point = CASES[case]
    base = model_dir(tmp_path)
    rows = colour_rows(20)
    for i in range(0, 20, 3):
        rows[i]["response"] += " the answer is yes."  # unequal lengths: packing and token weights matter
    demos = write_jsonl(tmp_path / "demos.jsonl", rows)

    def args(out):
        return ["sft", f"model.path={base}", f"data.train_file={demos}", f"train.output_dir={out}",
                "data.max_prompt_length=24", "train.per_device_batch_size=2", "train.grad_accum_steps=2",
                "train.num_epochs=3", "train.lr=3e-3", "train.warmup_steps=2", "train.progress_bar=false",
                "train.keep_checkpoints_at_end=true",  # the optimizer moments are compared below
                *extra]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(args(straight)).returncode == 0
    killed = run(args(resumed), kill_after=kill_after)
    assert killed.returncode == -signal.SIGKILL
    assert not (resumed / "final").exists()
    again = run(args(resumed))
    assert again.returncode == 0, again.stderr
    assert resume_point in again.stderr

    a, b = read_metrics(straight), read_metrics(resumed)
    steps = 12 if "packing=true" in extra else 15
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("train/loss", "train/lr", "train/grad_norm"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-6, abs=1e-9), (row_a["step"], key)
    final_a = load_file(straight / "final" / "model.safetensors")
    final_b = load_file(resumed / "final" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], atol=1e-6), key
    last = f"checkpoint-{a[-1]['step']}"
    moments_a = torch.load(straight / last / "optimizer.pt", weights_only=True)["state"]
    moments_b = torch.load(resumed / last / "optimizer.pt", weights_only=True)["state"]
    for index, state in moments_a.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(state[name], moments_b[index][name], atol=1e-6)


@pytest.mark.slow
def test_killed_while_exporting_or_retiring_then_rerun_ends_the_same(tmp_path):
    """SIGKILL at the end of a run — while final/ is exported, and after the last checkpoint's manifest
    dropped the optimizer but before optimizer.pt was deleted — then the same command: final/ holds the
    uninterrupted run's weights, no temporary folder is left, and no optimizer state stays."""
    base = model_dir(tmp_path)
    demos = write_jsonl(tmp_path / "demos.jsonl", colour_rows(8))

    def args(out):
        return ["sft", f"model.path={base}", f"data.train_file={demos}", f"train.output_dir={out}",
                "data.max_prompt_length=24", "train.per_device_batch_size=4", "train.max_steps=4",
                "train.save_every=2", "train.lr=3e-3", "train.progress_bar=false"]

    straight = tmp_path / "straight"
    assert run(args(straight)).returncode == 0
    expected = load_file(straight / "final" / "model.safetensors")
    for kill_at in ("final_export", "retire"):
        out = tmp_path / kill_at
        killed = run(args(out), kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        if kill_at == "final_export":
            assert not (out / "final").exists() and list(out.glob(".tmp-final-*"))
            assert (out / "checkpoint-4" / "optimizer.pt").exists()  # nothing retired before final/ is whole
        else:
            assert (out / "final").is_dir() and (out / "checkpoint-4" / "optimizer.pt").exists()
        again = run(args(out))
        assert again.returncode == 0, again.stderr[-2000:]
        assert "already complete" in again.stderr
        final = load_file(out / "final" / "model.safetensors")
        assert all(torch.equal(final[k], expected[k]) for k in expected), kill_at
        assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
        assert not (out / "checkpoint-4" / "optimizer.pt").exists()
