"""The trainers unchanged under ``accelerate launch`` with 2 CPU processes (configs/accelerate/cpu_2proc.yaml):
every process ends with the same weights, and SFT with the same global batch trains like one process.

Each run goes through the real CLI (``tests/multiprocess_cli.py``), which also makes every process write the
weights it holds when its training loop ends.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

try:
    from multiprocess_helpers import cpu_processes
    from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from stage_helpers import colour_rows, model_dir, write_jsonl
    from test_dpo_common import make_data
    from test_dpo_common import model_dir as dpo_model_dir
    from test_grpo import letter_prompts
except ImportError:  # tests/ imported as a package
    from tests.multiprocess_helpers import cpu_processes
    from tests.ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from tests.stage_helpers import colour_rows, model_dir, write_jsonl
    from tests.test_dpo_common import make_data
    from tests.test_dpo_common import model_dir as dpo_model_dir
    from tests.test_grpo import letter_prompts

pytestmark = pytest.mark.slow

CLI = Path(__file__).with_name("multiprocess_cli.py")
QUIET = ["train.progress_bar=false", "train.save_every=0"]


def run(out: Path, args: list[str], processes: int) -> dict[int, dict[str, torch.Tensor]]:
    """``rlhfkit ARGS`` in ``processes`` processes (accelerate launch); the weights each process ended with."""
    command, env = cpu_processes([str(CLI), str(out / "weights"), *args], processes, launcher="accelerate")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    files = sorted((out / "weights").glob("rank*.pt"))
    assert [f.name for f in files] == [f"rank{i}.pt" for i in range(processes)], "one file per process"
    return {i: torch.load(f, weights_only=True) for i, f in enumerate(files)}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_sft_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    args = ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=4", "train.lr=1e-3", *QUIET]
    one = run(tmp_path / "one", [*args, f"train.output_dir={tmp_path / 'one'}", "train.per_device_batch_size=4"], 1)
    two = run(tmp_path / "two", [*args, f"train.output_dir={tmp_path / 'two'}", "train.per_device_batch_size=2"], 2)
    assert_identical(two[0], two[1])  # DDP: the same averaged gradient, the same update on every process
    assert max_difference(two[0], one[0]) < 1e-6  # 2 × 2 rows per step train like 1 × 4 (float rounding)
    # the check has power: training moved the weights far more than that, and a process training alone on
    # batches of 2 (what each would do if the processes did not form one group) ends elsewhere
    from safetensors.torch import load_file

    initial = load_file(next(model_dir(tmp_path).glob("*.safetensors")))
    assert max_difference({k: one[0][k] for k in initial}, initial) > 1e-3
    half = run(tmp_path / "half", [*args, f"train.output_dir={tmp_path / 'half'}", "train.per_device_batch_size=2"],
               1)  # one process, half the global batch: another trajectory
    assert max_difference(half[0], one[0]) > 1e-4


def test_ppo_ranks_hold_identical_policy_and_value_model(tmp_path):
    args = ["ppo", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
            f"data.train_file={save_prompts(tmp_path, 16)}", f"train.output_dir={tmp_path / 'out'}",
            "train.per_device_batch_size=4", "train.max_steps=2", "ppo.minibatch_size=2", "rollout.max_new_tokens=6",
            "data.max_prompt_length=32", "data.max_length=64", "train.lr=1e-2", "rollout.print_samples=0", *QUIET]
    two = run(tmp_path, args, 2)
    assert_identical(two[0], two[1])  # each process sampled its own rollouts, yet both applied the same updates
    assert any(k.startswith("value_model.") for k in two[0]) and any(k.startswith("policy.") for k in two[0])
    from safetensors.torch import load_file

    initial = load_file(next(save_policy_folder(tmp_path).glob("*.safetensors")))
    trained = {k.removeprefix("policy."): v for k, v in two[0].items() if k.startswith("policy.")}
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-4  # it did train


def test_dpo_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path):
    make_data(tmp_path)
    args = ["dpo", f"model.path={dpo_model_dir(tmp_path)}", f"data.train_file={tmp_path / 'train.jsonl'}",
            "data.max_length=64", "data.max_prompt_length=32", "train.max_steps=3", "train.lr=3e-3", *QUIET]
    one = run(tmp_path / "one", [*args, f"train.output_dir={tmp_path / 'one'}", "train.per_device_batch_size=8"], 1)
    two = run(tmp_path / "two", [*args, f"train.output_dir={tmp_path / 'two'}", "train.per_device_batch_size=4"], 2)
    assert_identical(two[0], two[1])
    assert max_difference(two[0], one[0]) < 1e-5  # gloo's all-reduce sums in another order than one process


@pytest.mark.parametrize("shared_prompt", ["true", "false"])
def test_reward_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path, shared_prompt):
    """Both scoring paths — one row per prompt (shared) and one row per response — under DDP."""
    make_data(tmp_path)
    args = ["reward", f"model.path={dpo_model_dir(tmp_path)}", f"data.train_file={tmp_path / 'train.jsonl'}",
            "data.max_length=64", "data.max_prompt_length=32", "train.max_steps=3", "train.lr=3e-3",
            f"shared_prompt={shared_prompt}", "pair_weighting=pair", *QUIET]
    one = run(tmp_path / "one", [*args, f"train.output_dir={tmp_path / 'one'}", "train.per_device_batch_size=8"], 1)
    two = run(tmp_path / "two", [*args, f"train.output_dir={tmp_path / 'two'}", "train.per_device_batch_size=4"], 2)
    assert_identical(two[0], two[1])
    assert max_difference(two[0], one[0]) < 1e-5


def test_setup_and_result_lines_print_once_with_two_processes(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", colour_rows(16))
    args = ["sft", f"model.path={model_dir(tmp_path)}", f"data.train_file={data}", "data.max_length=48",
            "data.max_prompt_length=24", "train.max_steps=2", "train.per_device_batch_size=2",
            f"train.output_dir={tmp_path / 'out'}", *QUIET]
    command, env = cpu_processes([str(CLI), str(tmp_path / "weights"), *args], 2, launcher="accelerate")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(list((tmp_path / "weights").glob("rank*.pt"))) == 2  # two processes did train
    err = done.stderr.replace("\r", "\n")
    for line in (f"{data}: 16 sft rows", "sft train: 16 rows", "sft: saved the model", "finished 2 steps"):
        assert err.count(line) == 1, (line, err[-3000:])
    assert err.count("Loading weights: 100%") <= 1  # transformers' bar: the main process's at most
    assert done.stdout.count("sft: completed") == 1, done.stdout


def run_rows(out: Path, args: list[str], processes: int, per_device: int,
             minibatch: int) -> dict[int, dict[str, torch.Tensor]]:
    """The online trainer in ``processes`` processes through tests/multiprocess_ppo_rows.py (rows that do not
    depend on the process count), one minibatch of ``minibatch`` rows per process; the weights each ended with."""
    rows_cli = Path(__file__).with_name("multiprocess_ppo_rows.py")
    command, env = cpu_processes([str(rows_cli), str(out / "weights"), *args, f"train.output_dir={out}",
                                  f"train.per_device_batch_size={per_device}", f"ppo.minibatch_size={minibatch}"],
                                 processes, launcher="accelerate")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return {i: torch.load(out / "weights" / f"rank{i}.pt", weights_only=True) for i in range(processes)}


def test_ppo_objective_is_independent_of_the_process_count(tmp_path):
    """The same rows (sampled one prompt at a time, see tests/multiprocess_ppo_rows.py), of ragged lengths, in
    one process or split over two: the same updates. Needs the token mean and the advantage whitening taken
    over every process's rows — per process, the processes' token counts and scales would weight the rows."""
    args = ["ppo", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
            f"data.train_file={save_prompts(tmp_path, 16)}", "train.max_steps=2", "ppo.epochs=2",
            "rollout.max_new_tokens=12", "data.max_prompt_length=32", "data.max_length=64", "train.lr=1e-2",
            "value_model.lr=1e-2", "rollout.print_samples=0", "ppo.missing_eos_penalty=null", *QUIET]
    one, two = run_rows(tmp_path / "one", args, 1, 8, 8), run_rows(tmp_path / "two", args, 2, 4, 4)
    assert_identical(two[0], two[1])
    # float rounding only: the processes' gradient sums are added in another order, and Adam (lr 1e-2) turns
    # near-zero gradients' rounding into visible steps — measured 1.6e-5 here; the per-process objective
    # this test guards against left the weights 0.059 apart
    assert max_difference(two[0], one[0]) < 1e-4


SPREAD = '''
def spread(prompts, completions, letter=None, **columns):
    """Varies with the text on rows with a letter; 0 on the others, whose groups are then all equal."""
    letter = letter or [None] * len(completions)
    return [0.0 if l is None else (sum(map(ord, c)) % 97) / 97 for c, l in zip(completions, letter)]
'''


@pytest.mark.parametrize(("estimator", "aggregation", "filtered", "penalty"),
                         [("grpo", "token_mean", "false", "loss"), ("grpo", "sequence_mean", "true", "loss"),
                          ("reinforce_pp", "token_mean", "false", "reward")])
def test_grpo_objective_is_independent_of_the_process_count(tmp_path, estimator, aggregation, filtered, penalty):
    """GRPO's update shares PPO's global divisor: groups of 2 ragged responses (each prompt's own length,
    see tests/multiprocess_ppo_rows.py), the KL as a loss term, one process or two — the same weights. Divided
    by each process's own token count, the processes' rows would weigh by how many tokens each happened to hold.
    Every process holds as many responses, so sequence_mean is checked with advantage.filter_zero_std_groups,
    which leaves the processes different numbers of them (the letterless prompts' groups are dropped).
    REINFORCE++ whitens its returns over the batch, which must be every process's rows, as PPO's advantages
    (per process, each process's returns would get their own scale); its KL is in the rewards, as Hu 2025 has it."""
    (tmp_path / "spread_reward.py").write_text(SPREAD)
    args = ["grpo", f"model.path={save_policy_folder(tmp_path)}", f"data.train_file={letter_prompts(tmp_path, 16)}",
            f'rewards=[{{function: "{tmp_path / "spread_reward.py"}:spread"}}]', "rollout.n=2",
            "train.max_steps=2", "ppo.epochs=2", "rollout.max_new_tokens=12", "data.max_prompt_length=32",
            "data.max_length=64", "train.lr=1e-2", "rollout.print_samples=0", f"kl.penalty={penalty}",
            "kl.init_coef=0.1", "advantage.clip_range_high=0.28", f"advantage.estimator={estimator}",
            f"advantage.loss_aggregation={aggregation}", f"advantage.filter_zero_std_groups={filtered}", *QUIET]
    one, two = run_rows(tmp_path / "one", args, 1, 8, 16), run_rows(tmp_path / "two", args, 2, 4, 8)
    assert_identical(two[0], two[1])
    print(f"{estimator}: 1 vs 2 processes, max |Δweight| {max_difference(two[0], one[0]):.3g}")
    assert max_difference(two[0], one[0]) < 1e-4  # PPO's tolerance (float rounding through Adam)
    from safetensors.torch import load_file

    initial = load_file(next(save_policy_folder(tmp_path).glob("*.safetensors")))
    trained = {k.removeprefix("policy."): v for k, v in one[0].items() if k.startswith("policy.")}
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-3  # it did train
