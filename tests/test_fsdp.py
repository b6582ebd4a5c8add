"""Every stage under FSDP2 with 2 CPU processes (``accelerate launch --config_file configs/accelerate/fsdp.yaml``
with ``ACCELERATE_USE_CPU=1``), through the real CLI (``tests/multiprocess_cli.py``).

The trap these tests guard against: accelerate turns fsdp.yaml into plain DDP on CPU processes, and a DDP run
matches one process just as well. So each test also asserts that the parameters really were sharded — every
one a DTensor of which each process held about half — besides matching one process with the same global batch.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

try:
    from multiprocess_helpers import FSDP_CONFIG, cpu_processes
    from stage_helpers import colour_rows, model_dir, write_jsonl
    from test_dpo_common import make_data
    from test_dpo_common import model_dir as dpo_model_dir
except ImportError:  # tests/ imported as a package
    from tests.multiprocess_helpers import FSDP_CONFIG, cpu_processes
    from tests.stage_helpers import colour_rows, model_dir, write_jsonl
    from tests.test_dpo_common import make_data
    from tests.test_dpo_common import model_dir as dpo_model_dir

pytestmark = pytest.mark.slow

CLI = Path(__file__).with_name("multiprocess_cli.py")
QUIET = ["train.progress_bar=false", "train.save_every=0"]


def launch(out: Path, args: list[str], processes: int, kill_after: int | None = None) -> subprocess.CompletedProcess:
    """``rlhfkit ARGS`` with ``train.output_dir=out``: one plain process, or ``processes`` FSDP2 processes;
    with ``kill_after`` every process SIGKILLs itself after that step (the launch then fails)."""
    command, env = cpu_processes([str(CLI), str(out / "weights"), *args, f"train.output_dir={out}"], processes,
                                 launcher="accelerate", config=FSDP_CONFIG)
    if kill_after is not None:
        env["MP_TEST_KILL_AFTER_STEP"] = str(kill_after)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if kill_after is None:
        assert done.returncode == 0, done.stderr[-4000:]
    else:
        assert done.returncode != 0 and not (out / "weights").exists(), done.stderr[-4000:]
    return done


def weights(out: Path, processes: int) -> dict[int, dict[str, torch.Tensor]]:
    return {i: torch.load(out / "weights" / f"rank{i}.pt", weights_only=True) for i in range(processes)}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_sharded(out: Path, processes: int = 2) -> None:
    """Every parameter was a DTensor; each process held about 1/N of it, and together all of it."""
    reports = [torch.load(out / "weights" / f"shards_rank{i}.pt", weights_only=True) for i in range(processes)]
    total_local = [sum(r["local"] for r in report.values()) for report in reports]
    total = sum(r["global"] for r in reports[0].values())
    for name, row in reports[0].items():
        assert row["type"] == "DTensor", (name, row)
        assert sum(report[name]["local"] for report in reports) == row["global"], name  # no copy, no gap
    for held in total_local:  # dim-0 shards: uneven rows (odd sizes) are the only slack
        assert abs(held / total - 1 / processes) < 0.05, (held, total)


def train_one_and_two(tmp_path: Path, args: list[str], per_device_one: int) -> tuple[dict, dict]:
    """The same global batch in one plain process and in two FSDP2 processes; both ranks' gathered weights."""
    one = launch(tmp_path / "one", [*args, f"train.per_device_batch_size={per_device_one}"], 1)
    del one
    launch(tmp_path / "two", [*args, f"train.per_device_batch_size={per_device_one // 2}"], 2)
    assert_sharded(tmp_path / "two")
    return weights(tmp_path / "one", 1), weights(tmp_path / "two", 2)


def test_sft_is_sharded_and_matches_one_process(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    args = ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=4", "train.lr=1e-3", "train.grad_accum_steps=2", *QUIET]
    one, two = train_one_and_two(tmp_path, args, 4)
    assert max_difference(two[0], two[1]) == 0  # both gathered the same shards
    # float rounding only (reduce-scatter sums in another order than one process's backward)
    assert max_difference(two[0], one[0]) < 1e-5
    from safetensors.torch import load_file

    initial = load_file(next(model_dir(tmp_path).glob("*.safetensors")))
    assert max_difference({k: one[0][k] for k in initial}, initial) > 1e-3  # the check has power: it trained
    final = load_file(tmp_path / "two" / "final" / "model.safetensors")  # one standard folder, whole weights
    assert max_difference({k: two[0][k] for k in final}, final) == 0


@pytest.mark.parametrize("reference_mode", ["precompute", "on_the_fly", "lora_adapters_off"])
def test_dpo_is_sharded_and_matches_one_process(tmp_path, reference_mode):
    """The policy is sharded; π_ref is a table (precompute), a frozen copy replicated on every process
    (on_the_fly), or with LoRA the sharded policy itself with its adapters disabled."""
    make_data(tmp_path)
    mode = ["reference_mode=on_the_fly", "lora.enabled=true", "lora.r=4"] if reference_mode.startswith("lora") \
        else [f"reference_mode={reference_mode}"]
    args = ["dpo", f"model.path={dpo_model_dir(tmp_path)}", f"data.train_file={tmp_path / 'train.jsonl'}",
            "data.max_length=64", "data.max_prompt_length=32", "train.max_steps=3", "train.lr=3e-3", *mode, *QUIET]
    one, two = train_one_and_two(tmp_path, args, 8)
    assert max_difference(two[0], two[1]) == 0
    assert max_difference(two[0], one[0]) < 1e-5
    from safetensors.torch import load_file

    if reference_mode.startswith("lora"):  # the adapters trained (lora_B starts at 0)
        assert max(float(v.abs().max()) for k, v in one[0].items() if "lora_B" in k) > 1e-3
        return
    initial = load_file(next(dpo_model_dir(tmp_path).glob("*.safetensors")))
    assert max_difference({k: one[0][k] for k in initial}, initial) > 1e-3


def test_reward_is_sharded_and_matches_one_process(tmp_path):
    make_data(tmp_path)
    args = ["reward", f"model.path={dpo_model_dir(tmp_path)}", f"data.train_file={tmp_path / 'train.jsonl'}",
            "data.max_length=64", "data.max_prompt_length=32", "train.max_steps=3", "train.lr=3e-3",
            "pair_weighting=pair", *QUIET]
    one, two = train_one_and_two(tmp_path, args, 8)
    assert max_difference(two[0], two[1]) == 0
    assert max_difference(two[0], one[0]) < 1e-5
    assert max(float(v.abs().max()) for k, v in one[0].items() if "score" in k) > 0  # the head exists, trained
    final = tmp_path / "two" / "final"
    assert (final / "config.json").is_file() and (final / "rlhfkit_normalization.json").is_file()


def test_sft_lora_is_sharded_and_matches_one_process(tmp_path):
    """LoRA under FSDP2: the frozen base and the adapters share units (FSDP2 shards frozen parameters too)."""
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    args = ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=3", "train.lr=1e-2", "lora.enabled=true", "lora.r=4",
            *QUIET]
    one, two = train_one_and_two(tmp_path, args, 4)
    assert max_difference(two[0], two[1]) == 0
    assert max_difference(two[0], one[0]) < 1e-5
    lora = [k for k in one[0] if "lora_B" in k]
    assert lora and max(float(one[0][k].abs().max()) for k in lora) > 1e-3  # the adapters trained (B starts at 0)
    from safetensors.torch import load_file

    merged = [load_file(tmp_path / run / "final" / "model.safetensors") for run in ("one", "two")]  # lora merged
    assert max_difference(*merged) < 1e-5
    initial = load_file(next(model_dir(tmp_path).glob("*.safetensors")))
    assert max_difference({k: merged[1][k] for k in initial}, initial) > 1e-4
