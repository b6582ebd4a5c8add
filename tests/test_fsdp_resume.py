"""Kill-and-resume under FSDP2 (2 CPU processes): sharded checkpoints (torch.distributed.checkpoint, one shard
file per process, atomic like any checkpoint), SIGKILL of every process mid-run, the same command again — and
the run ends with the same weights as one never stopped. Also resumed by one plain process (2 → 1) and written by
one FSDP2 process then resumed by two (1 → 2): DCP re-slices the shards. A checkpoint of one plain process is
refused under FSDP2. The final export is one standard Hugging Face folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

try:
    from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from stage_helpers import colour_rows, model_dir, write_jsonl
    from test_fsdp import QUIET, assert_sharded, launch, max_difference, weights
except ImportError:  # tests/ imported as a package
    from tests.ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from tests.stage_helpers import colour_rows, model_dir, write_jsonl
    from tests.test_fsdp import QUIET, assert_sharded, launch, max_difference, weights

pytestmark = pytest.mark.slow


def sft_args(tmp_path: Path) -> list[str]:
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    return ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=4", "train.lr=1e-3", "train.save_every=2",
            "train.keep_checkpoints_at_end=true", *[q for q in QUIET if "save_every" not in q]]


def assert_one_shard_per_process(checkpoint: Path, processes: int = 2) -> None:
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["model_format"] == "dcp"
    for part in ("model_dcp", "optimizer_dcp"):
        shards = sorted(p.name for p in (checkpoint / part).glob("*.distcp"))
        assert shards == [f"__{r}_0.distcp" for r in range(processes)], shards
        assert all(f"{part}/{name}" in manifest["files"] for name in [*shards, ".metadata"])  # CRC-checked
    assert not (checkpoint / "model").exists()  # nothing gathered into one file


def test_sft_killed_and_resumed_under_fsdp2_ends_like_an_uninterrupted_run(tmp_path):
    args = [*sft_args(tmp_path), "train.per_device_batch_size=2"]
    launch(tmp_path / "straight", args, 2)
    launch(tmp_path / "resumed", args, 2, kill_after=3)  # checkpoint-2 written, step 3 lost
    assert [p.name for p in sorted((tmp_path / "resumed").glob("checkpoint-*"))] == ["checkpoint-2"]
    assert_one_shard_per_process(tmp_path / "resumed" / "checkpoint-2")
    done = launch(tmp_path / "resumed", args, 2)
    assert "resuming from" in done.stderr and "checkpoint-2" in done.stderr
    assert_sharded(tmp_path / "resumed")
    straight, resumed = weights(tmp_path / "straight", 2), weights(tmp_path / "resumed", 2)
    assert max_difference(straight[0], resumed[0]) == 0  # bit for bit: model, AdamW moments, lr, data position
    assert_one_shard_per_process(tmp_path / "resumed" / "checkpoint-4")
    from safetensors.torch import load_file

    final = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert max_difference({k: resumed[0][k] for k in final}, final) == 0


def test_fsdp2_checkpoint_resumes_in_one_plain_process(tmp_path):
    """DCP re-slices the 2 processes' shards for one process holding whole tensors (same global batch)."""
    args = sft_args(tmp_path)
    launch(tmp_path / "straight", [*args, "train.per_device_batch_size=2"], 2)
    launch(tmp_path / "resumed", [*args, "train.per_device_batch_size=2"], 2, kill_after=3)
    done = launch(tmp_path / "resumed", [*args, "train.per_device_batch_size=4"], 1)
    assert "resuming from" in done.stderr
    straight, resumed = weights(tmp_path / "straight", 2), weights(tmp_path / "resumed", 1)
    assert max_difference(straight[0], resumed[0]) < 1e-5  # another reduction order for steps 3 and 4
    # the check has power: steps 3 and 4 (trained after the resume) moved the weights far more than that
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(tmp_path / "resumed" / "checkpoint-2" / "model_dcp", tmp_path / "step2.pt")
    at_step2 = torch.load(tmp_path / "step2.pt", weights_only=True)
    assert max_difference({k: at_step2[k] for k in resumed[0]}, resumed[0]) > 1e-4


def launch_one_fsdp2_process(out: Path, args: list[str], kill_after: int | None = None) -> None:
    """``rlhfkit ARGS`` as ONE FSDP2 process (torchrun with the two variables accelerate's fsdp.yaml sets): it
    shards over a mesh of one and writes DCP checkpoints, unlike :func:`launch`'s one plain process."""
    import subprocess

    try:
        from multiprocess_helpers import cpu_processes
        from test_fsdp import CLI
    except ImportError:  # tests/ imported as a package
        from tests.multiprocess_helpers import cpu_processes
        from tests.test_fsdp import CLI

    _, env = cpu_processes([], 2)  # the CPU processes' environment (gloo, one thread)
    env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    if kill_after is not None:
        env["MP_TEST_KILL_AFTER_STEP"] = str(kill_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(CLI),
               str(out / "weights"), *args, f"train.output_dir={out}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if kill_after is None:
        assert done.returncode == 0, done.stderr[-4000:]
    else:
        assert done.returncode != 0 and not (out / "weights").exists(), done.stderr[-4000:]


def test_fsdp2_checkpoint_of_one_process_resumes_on_two(tmp_path):
    """1 → 2: one FSDP2 process writes whole tensors as DCP shards of a mesh of one; DCP re-slices them for two
    processes (same global batch). A checkpoint of one *plain* process cannot (refused, test below)."""
    args = sft_args(tmp_path)
    launch(tmp_path / "straight", [*args, "train.per_device_batch_size=2"], 2)
    launch_one_fsdp2_process(tmp_path / "resumed", [*args, "train.per_device_batch_size=4"], kill_after=3)
    assert_one_shard_per_process(tmp_path / "resumed" / "checkpoint-2", processes=1)
    done = launch(tmp_path / "resumed", [*args, "train.per_device_batch_size=2"], 2)
    assert "resuming from" in done.stderr and "checkpoint-2" in done.stderr
    assert_sharded(tmp_path / "resumed")  # really sharded over two after the resume
    straight, resumed = weights(tmp_path / "straight", 2), weights(tmp_path / "resumed", 2)
    assert max_difference(resumed[0], resumed[1]) == 0
    # steps 1-2 summed in one process's order, 3-4 in two's: float rounding only, as 2 → 1
    assert max_difference(straight[0], resumed[0]) < 1e-5
    assert_one_shard_per_process(tmp_path / "resumed" / "checkpoint-4", processes=2)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(tmp_path / "resumed" / "checkpoint-2" / "model_dcp", tmp_path / "step2.pt")
    at_step2 = torch.load(tmp_path / "step2.pt", weights_only=True)
    assert max_difference({k: at_step2[k] for k in resumed[0]}, resumed[0]) > 1e-4  # the check has power


def test_ppo_killed_and_resumed_under_fsdp2_ends_like_an_uninterrupted_run(tmp_path):
    """PPO's stage state (sampling RNG, KL controller) rides in the sharded checkpoint like SFT's data position."""
    args = ["ppo", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
            f"data.train_file={save_prompts(tmp_path, 16)}", "train.per_device_batch_size=2", "train.max_steps=4",
            "train.save_every=2", "ppo.minibatch_size=2", "rollout.max_new_tokens=6", "data.max_prompt_length=32",
            "data.max_length=64", "train.lr=1e-2", "rollout.print_samples=0", "kl.controller=adaptive",
            "train.progress_bar=false"]
    launch(tmp_path / "straight", args, 2)
    launch(tmp_path / "resumed", args, 2, kill_after=3)
    assert_one_shard_per_process(tmp_path / "resumed" / "checkpoint-2")
    done = launch(tmp_path / "resumed", args, 2)
    assert "resuming from" in done.stderr
    straight, resumed = weights(tmp_path / "straight", 2), weights(tmp_path / "resumed", 2)
    assert max_difference(straight[0], resumed[0]) == 0


def test_a_checkpoint_without_fsdp2_is_refused_under_fsdp2_in_one_sentence(tmp_path):
    """A plain (one-process or DDP) checkpoint holds one optimizer state by index, not shards by name."""
    import subprocess

    from multiprocess_helpers import FSDP_CONFIG, cpu_processes
    from test_fsdp import CLI

    args = sft_args(tmp_path)
    launch(tmp_path / "run", [*args, "train.per_device_batch_size=4"], 1, kill_after=3)
    command, env = cpu_processes([str(CLI), str(tmp_path / "w"), *args, "train.per_device_batch_size=2",
                                  f"train.output_dir={tmp_path / 'run'}"], 2, launcher="accelerate",
                                 config=FSDP_CONFIG)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    assert "under FSDP2: it was written without FSDP2 (transformers format" in done.stderr
    assert "a run started under FSDP2, even as one process, may change its process count" in done.stderr
    assert "ConfigError" not in done.stderr  # the CLI's one sentence (exit 2), not a traceback
    assert (tmp_path / "run" / "checkpoint-2" / "model").is_dir()  # left as it was
