"""A two-machine launch simulated on this machine: two ``accelerate launch`` processes, one per "machine"
(``--machine_rank 0`` and ``1`` of configs/accelerate/fsdp_multinode.yaml), meeting on 127.0.0.1, each
starting one CPU process — FSDP2 over the two, an SFT run end to end (checkpoint, final export)."""

from __future__ import annotations

import subprocess
import sys

import pytest

try:
    from multiprocess_helpers import REPO, cpu_processes, free_port
    from stage_helpers import colour_rows, model_dir, write_jsonl
    from test_fsdp import CLI, QUIET, assert_sharded, launch, max_difference, weights
except ImportError:  # tests/ imported as a package
    from tests.multiprocess_helpers import REPO, cpu_processes, free_port
    from tests.stage_helpers import colour_rows, model_dir, write_jsonl
    from tests.test_fsdp import CLI, QUIET, assert_sharded, launch, max_difference, weights

pytestmark = pytest.mark.slow

MULTINODE = REPO / "configs" / "accelerate" / "fsdp_multinode.yaml"


def machine(rank: int, port: int, script: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command "machine" ``rank`` of 2 runs: one process of the 2 in all."""
    _, env = cpu_processes(script, 2)  # the environment of CPU processes (gloo, one thread each)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTINODE),
            "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *script], env


def test_two_machines_on_loopback_train_sft_like_one_process(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    args = ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=4", "train.lr=1e-3", *QUIET]
    out = tmp_path / "two_machines"
    script = [str(CLI), str(out / "weights"), *args, f"train.output_dir={out}", "train.per_device_batch_size=2"]
    port = free_port()
    launchers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command, env in (machine(rank, port, script) for rank in (0, 1))]
    results = [p.communicate(timeout=900) for p in launchers]
    for p, (_stdout, stderr) in zip(launchers, results):
        assert p.returncode == 0, stderr[-4000:]
    assert "sft: completed" in results[0][0] and "sft: completed" not in results[1][0]  # one main process
    assert_sharded(out)  # one process on each "machine", each holding half of every parameter
    launch(tmp_path / "one", [*args, "train.per_device_batch_size=4"], 1)
    two, one = weights(out, 2), weights(tmp_path / "one", 1)
    assert max_difference(two[0], two[1]) == 0 and max_difference(two[0], one[0]) < 1e-5
    assert (out / "final" / "model.safetensors").is_file() and (out / "checkpoint-4" / "model_dcp").is_dir()
