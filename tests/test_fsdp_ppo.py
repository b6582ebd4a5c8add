"""PPO and GRPO under FSDP2 with 2 CPU processes: the policy and the value model are sharded (one FSDP2 root over
both); the reference and the reward model, frozen, are whole on every process. Sampling — and the rollout's
forwards — hold the trained models whole for the rollout (``fsdp.gathered``), so each process generates until
its own rows end; the PPO updates run sharded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

try:
    from multiprocess_helpers import FSDP_CONFIG, cpu_processes
    from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from test_fsdp import QUIET, assert_sharded, launch, max_difference, weights
    from test_grpo import letter_prompts, reward_module
except ImportError:  # tests/ imported as a package
    from tests.multiprocess_helpers import FSDP_CONFIG, cpu_processes
    from tests.ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from tests.test_fsdp import QUIET, assert_sharded, launch, max_difference, weights
    from tests.test_grpo import letter_prompts, reward_module

pytestmark = pytest.mark.slow

ROWS_CLI = Path(__file__).with_name("multiprocess_ppo_rows.py")


def launch_rows(out: Path, args: list[str], processes: int) -> dict[int, dict[str, torch.Tensor]]:
    """PPO whose rows do not depend on the process count (tests/multiprocess_ppo_rows.py), under FSDP2."""
    command, env = cpu_processes([str(ROWS_CLI), str(out / "weights"), *args, f"train.output_dir={out}"],
                                 processes, launcher="accelerate", config=FSDP_CONFIG)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return weights(out, processes)


@pytest.mark.parametrize("sampling", ["gathered", "sharded"])
def test_ppo_is_sharded_and_its_objective_matches_one_process(tmp_path, sampling):
    """``sharded`` samples with the weights sharded; here each process's rows also stop at other lengths
    (tests/multiprocess_ppo_rows.py: 4 … 12 new tokens by prompt), so the processes that end first must keep
    forwarding in step with the others (``generate(synced=True)``) — or the run would hang."""
    args = ["ppo", f"rollout.fsdp_sampling={sampling}", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
            f"data.train_file={save_prompts(tmp_path, 16)}", f"data.eval_file={save_prompts(tmp_path, 4, 'e.jsonl')}",
            "train.max_steps=2", "ppo.epochs=2", "rollout.max_new_tokens=12", "data.max_prompt_length=32",
            "data.max_length=64", "train.lr=1e-2", "value_model.lr=1e-2", "rollout.print_samples=0",
            "ppo.missing_eos_penalty=null", *QUIET]
    one = launch_rows(tmp_path / "one", [*args, "train.per_device_batch_size=8", "ppo.minibatch_size=8"], 1)
    two = launch_rows(tmp_path / "two", [*args, "train.per_device_batch_size=4", "ppo.minibatch_size=4"], 2)
    assert_sharded(tmp_path / "two")
    assert any(k.startswith("value_model.") for k in two[0]) and any(k.startswith("policy.") for k in two[0])
    assert max_difference(two[0], two[1]) == 0
    assert max_difference(two[0], one[0]) < 1e-4  # as under DDP (tests/test_multiprocess.py): Adam's rounding
    from safetensors.torch import load_file

    initial = load_file(next(save_policy_folder(tmp_path).glob("*.safetensors")))
    trained = {k.removeprefix("policy."): v for k, v in two[0].items() if k.startswith("policy.")}
    assert max_difference({k: trained[k] for k in initial}, initial) > 1e-3  # it did train
    final = load_file(tmp_path / "two" / "final" / "model.safetensors")  # the policy alone, one standard folder
    assert max_difference({k: trained[k] for k in final}, final) == 0
    assert (tmp_path / "two" / "value_model" / "config.json").is_file()


@pytest.mark.parametrize(("estimator", "sampling"), [("grpo", "gathered"), ("rloo", "sharded")])
def test_critic_free_under_fsdp2_matches_ddp_with_the_same_processes(tmp_path, estimator, sampling):
    """Critic-free GRPO / RLOO: each process samples its own groups (its own generator), so the comparison is
    with DDP on the same 2 processes — the same rollouts, sharded sampling included — rather than with one
    process."""
    args = ["grpo", f"advantage.estimator={estimator}", f"rollout.fsdp_sampling={sampling}", f"model.path={save_policy_folder(tmp_path)}", f"data.train_file={letter_prompts(tmp_path)}",
            "train.per_device_batch_size=2", "train.max_steps=2", "ppo.minibatch_size=4", "rollout.max_new_tokens=6",
            "data.max_prompt_length=32", "data.max_length=64", "rollout.print_samples=0", "rollout.n=2",
            "train.lr=1e-2", "kl.penalty=loss", "kl.init_coef=0.1",
            f'rewards=[{{name: letter, function: "{reward_module(tmp_path)}:has_letter"}}]', *QUIET]
    launch(tmp_path / "fsdp", args, 2)
    assert_sharded(tmp_path / "fsdp")
    from test_multiprocess import run as run_ddp

    ddp = run_ddp(tmp_path / "ddp", [*args, f"train.output_dir={tmp_path / 'ddp'}"], 2)
    fsdp = weights(tmp_path / "fsdp", 2)
    # measured 0: two processes' gradients add in one order under both (reduce-scatter and all-reduce)
    assert max_difference(fsdp[0], ddp[0]) < 1e-6
    from safetensors.torch import load_file

    start = load_file(next(save_policy_folder(tmp_path).glob("*.safetensors")))
    trained = {k.removeprefix("policy."): v for k, v in fsdp[0].items() if k.startswith("policy.")}
    assert max_difference({k: trained[k] for k in start}, start) > 1e-4  # it did train
