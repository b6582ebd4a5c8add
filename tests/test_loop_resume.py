"""Kill-and-resume with real processes: SIGKILL a run, start a NEW process with the same command, and end
with the same per-step losses, weights, optimizer moments, learning rate and stage state as a run never
stopped — mid-epoch, at an epoch boundary, at the last step, during a save, and over two processes.

The toy run (``tests/loop_toy_train.py``): 44 examples, global batch 4 × 2 = 8, so 6 steps per epoch (the
6th has 4 examples), 3 epochs = 18 steps, a checkpoint every 4 steps, the last 2 kept.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine.metrics_log import read_metrics

try:
    from multiprocess_helpers import cpu_processes
except ImportError:  # tests/ imported as a package
    from tests.multiprocess_helpers import cpu_processes

pytestmark = pytest.mark.slow

TOY = Path(__file__).with_name("loop_toy_train.py")
COMMON = ["train.save_every=4", "train.num_epochs=3", "train.per_device_batch_size=4",
          "train.grad_accum_steps=2", "train.lr=0.01", "train.progress_bar=false",
          "train.save_total_limit=2"]
TOTAL = 18


def run_toy(output_dir: Path, *extra: str, kill_after: int | None = None, kill_during_save: int | None = None,
            processes: int = 1) -> subprocess.CompletedProcess:
    # python TOY …, or torchrun with `processes` CPU processes (tests/multiprocess_helpers.py)
    command, env = cpu_processes([str(TOY), f"train.output_dir={output_dir}", *COMMON, *extra], processes)
    env = {k: v for k, v in env.items() if not k.startswith("LOOP_TOY_")}
    if kill_after is not None:
        env["LOOP_TOY_KILL_AFTER_STEP"] = str(kill_after)
    if kill_during_save is not None:
        env["LOOP_TOY_KILL_DURING_SAVE"] = str(kill_during_save)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def run_ok(output_dir: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    result = run_toy(output_dir, *extra, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_killed(output_dir: Path, *extra: str, **kwargs) -> None:
    result = run_toy(output_dir, *extra, **kwargs)
    if kwargs.get("processes", 1) == 1:
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    else:  # torchrun reports the killed worker and stops the others
        assert result.returncode != 0 and "SIGKILL" in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_ok(out)
    return out


def step_rows(output_dir: Path) -> list[dict]:
    return [r for r in read_metrics(output_dir / "metrics.jsonl") if "event" not in r]


def events(output_dir: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(output_dir / "metrics.jsonl") if r.get("event") == name]


def assert_same_run(expected: Path, actual: Path, atol: float = 1e-6, step: int = TOTAL) -> None:
    """Per-step losses and lr, final weights, optimizer moments and lr, scheduler, RNG-driven stage state."""
    rows_e, rows_a = step_rows(expected), step_rows(actual)
    assert [r["step"] for r in rows_a] == list(range(1, step + 1))  # every step once, none repeated
    np.testing.assert_allclose([r["train/loss"] for r in rows_a], [r["train/loss"] for r in rows_e],
                               atol=atol, rtol=0)
    assert [r["train/lr"] for r in rows_a] == pytest.approx([r["train/lr"] for r in rows_e], abs=1e-12)
    assert [r["train/samples_seen"] for r in rows_a] == [r["train/samples_seen"] for r in rows_e]
    final_e, final_a = expected / f"checkpoint-{step}", actual / f"checkpoint-{step}"
    weights_e = load_file(next((final_e / "model").glob("*.safetensors")))
    weights_a = load_file(next((final_a / "model").glob("*.safetensors")))
    assert weights_e.keys() == weights_a.keys()
    for key in weights_e:
        torch.testing.assert_close(weights_a[key], weights_e[key], atol=atol, rtol=0)
    opt_e, opt_a = ckpt.load_torch(final_e / "optimizer.pt"), ckpt.load_torch(final_a / "optimizer.pt")
    assert [g["lr"] for g in opt_a["param_groups"]] == pytest.approx([g["lr"] for g in opt_e["param_groups"]])
    for index, state in opt_e["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_a["state"][index][name], state[name], atol=atol, rtol=0)
    sched_e, sched_a = ckpt.load_torch(final_e / "scheduler.pt"), ckpt.load_torch(final_a / "scheduler.pt")
    assert sched_a["last_epoch"] == sched_e["last_epoch"] == step
    assert ckpt.load_torch(final_a / "stage_rank0.pt") == ckpt.load_torch(final_e / "stage_rank0.pt")
    state_e, state_a = (ckpt.read_json(p / "trainer_state.json") for p in (final_e, final_a))
    for key in ("step", "epoch", "position", "samples_seen", "skipped_total"):
        assert state_a[key] == state_e[key], key


@pytest.mark.parametrize("kill_after,resumed_from,epoch,position", [
    (10, 8, 1, 16),  # killed mid-epoch between checkpoints: steps 9-10 are redone
    (12, 12, 2, 0),  # killed right after the checkpoint ending epoch 2: resumes at the start of epoch 3
    (17, 16, 2, 32),  # killed during the last steps: resumes just before the end
])
def test_sigkill_then_the_same_command_ends_like_an_uninterrupted_run(
        reference, tmp_path, kill_after, resumed_from, epoch, position):
    run_killed(tmp_path, kill_after=kill_after)
    assert ckpt.find_latest_checkpoint(tmp_path)[0].name == f"checkpoint-{resumed_from}"
    result = run_ok(tmp_path)
    assert "status=completed step=18" in result.stdout
    assert events(tmp_path, "resume") == [{"event": "resume", "step": resumed_from,
                                           "checkpoint": f"checkpoint-{resumed_from}", "epoch": epoch,
                                           "position": position}]
    assert_same_run(reference, tmp_path)
    assert [p.name for _s, p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-16", "checkpoint-18"]


def test_restarting_a_finished_run_does_nothing(reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    log_before = (tmp_path / "metrics.jsonl").read_text()
    result = run_ok(tmp_path)
    assert "status=already_complete step=18" in result.stdout
    assert "already complete" in result.stderr
    assert (tmp_path / "metrics.jsonl").read_text() == log_before
    assert_same_run(reference, tmp_path)


def test_sigkill_during_a_save_keeps_the_previous_checkpoints(reference, tmp_path):
    run_killed(tmp_path, kill_during_save=16)
    # the half-written checkpoint never got its name, and rotation did not run before it was complete
    left = sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name)
    assert left == [".tmp-checkpoint-16", "checkpoint-12", "checkpoint-8"]
    assert (tmp_path / ".tmp-checkpoint-16" / "optimizer.pt").exists()
    result = run_ok(tmp_path)
    assert "resuming from" in result.stderr and "checkpoint-12" in result.stderr
    assert not (tmp_path / ".tmp-checkpoint-16").exists()
    assert_same_run(reference, tmp_path)


def test_a_half_written_newest_checkpoint_is_skipped_after_a_kill(reference, tmp_path):
    run_killed(tmp_path, kill_after=13)
    (tmp_path / "checkpoint-12" / "manifest.json").unlink()  # as if the save of 12 had been torn
    result = run_ok(tmp_path)
    assert "skipped checkpoint-12: incomplete, no manifest" in result.stderr
    assert events(tmp_path, "resume")[0]["checkpoint"] == "checkpoint-8"
    assert_same_run(reference, tmp_path)


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "optimizer.pt"])
def test_a_same_size_damage_of_the_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, damaged):
    run_killed(tmp_path, kill_after=13)
    path = tmp_path / "checkpoint-12" / damaged
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0x21 for b in data[-64:])  # the last tensor bytes: finite garbage, same size
    path.write_bytes(bytes(data))
    result = run_ok(tmp_path)
    assert (f"skipped checkpoint-12: damaged, file {damaged} does not match its CRC-32" in result.stderr
            and "falling back to checkpoint-8" in result.stderr)
    assert events(tmp_path, "resume")[0]["checkpoint"] == "checkpoint-8"
    assert_same_run(reference, tmp_path)  # as if nothing had happened


def test_llama_with_attention_dropout_resumes_exactly(tmp_path):
    llama = ["toy.model=llama", "train.num_epochs=1"]  # 6 steps, checkpoints at 4 and 6
    run_ok(tmp_path / "reference", *llama)
    run_killed(tmp_path / "resumed", *llama, kill_after=5)
    run_ok(tmp_path / "resumed", *llama)
    assert_same_run(tmp_path / "reference", tmp_path / "resumed", step=6)
    assert (tmp_path / "resumed" / "checkpoint-6" / "model" / "config.json").exists()  # a standard HF folder


def test_two_processes_shard_the_same_global_batch_and_resume(tmp_path):
    # Without randomness, 2 processes × 2 examples × 2 micro-batches must train like 1 process × 4 × 2.
    exact = ["toy.randomness=false", "train.num_epochs=1"]
    run_ok(tmp_path / "one", *exact)
    two = [*exact, "train.per_device_batch_size=2"]
    run_killed(tmp_path / "two", *two, kill_after=5, processes=2)
    run_ok(tmp_path / "two", *two, processes=2)
    assert events(tmp_path / "two", "resume")[0]["step"] == 4
    assert (tmp_path / "two" / "checkpoint-6" / "rng_rank1.pt").exists()
    assert_same_run(tmp_path / "one", tmp_path / "two", atol=1e-5, step=6)
