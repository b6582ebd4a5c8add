"""``train.threads`` reaches torch in every stage, before its training loop starts; 0 leaves torch alone."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.engine.loop import TrainLoop
from rlhfkit.engine.train_config import TrainConfig, resume_conflict

try:
    from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from stage_helpers import cli, colour_rows, model_dir, write_jsonl
    from test_dpo_common import make_data
    from test_dpo_common import model_dir as dpo_model_dir
except ImportError:  # tests/ imported as a package
    from tests.ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from tests.stage_helpers import cli, colour_rows, model_dir, write_jsonl
    from tests.test_dpo_common import make_data
    from tests.test_dpo_common import model_dir as dpo_model_dir

QUIET = ["train.progress_bar=false", "train.save_every=0", "train.max_steps=1"]


def stage_args(stage: str, root) -> list[str]:
    if stage == "sft":
        data = write_jsonl(root / "demos.jsonl", colour_rows(8))
        return ["sft", f"model.path={model_dir(root)}", f"data.train_file={data}", "data.max_length=48",
                "data.max_prompt_length=24", "train.per_device_batch_size=4"]
    if stage == "ppo":
        return ["ppo", f"model.path={save_policy_folder(root)}", f"reward_model.path={save_reward_folder(root)}",
                f"data.train_file={save_prompts(root, 8)}", "train.per_device_batch_size=4", "ppo.minibatch_size=2",
                "rollout.max_new_tokens=4", "data.max_prompt_length=32", "data.max_length=64",
                "rollout.print_samples=0"]
    make_data(root, n_train=8, n_eval=4)
    return [stage, f"model.path={dpo_model_dir(root)}", f"data.train_file={root / 'train.jsonl'}",
            "data.max_length=64", "data.max_prompt_length=32", "train.per_device_batch_size=4"]


@pytest.fixture
def threads_at_loop_start(monkeypatch):
    """torch's thread count when each training loop starts (and torch's count restored after the test)."""
    seen: list[int] = []
    enter = TrainLoop.__enter__

    def recording_enter(self):
        seen.append(torch.get_num_threads())
        return enter(self)

    monkeypatch.setattr(TrainLoop, "__enter__", recording_enter)
    before = torch.get_num_threads()
    yield seen
    torch.set_num_threads(before)


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo"])
def test_train_threads_reaches_torch_before_the_loop(stage, tmp_path, threads_at_loop_start):
    torch.set_num_threads(2)
    assert cli([*stage_args(stage, tmp_path), *QUIET, f"train.output_dir={tmp_path / 'out'}", "train.threads=1"]) == 0
    assert threads_at_loop_start == [1] and torch.get_num_threads() == 1


def test_zero_threads_leaves_the_process_setting(tmp_path, threads_at_loop_start):
    torch.set_num_threads(2)
    assert cli([*stage_args("sft", tmp_path), *QUIET, f"train.output_dir={tmp_path / 'out'}"]) == 0
    assert threads_at_loop_start == [2] and torch.get_num_threads() == 2


def test_threads_is_checked_and_may_change_on_resume():
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        TrainConfig(threads=-1).validate()
    assert resume_conflict({"threads": 1, "lr": 1e-3}, {"threads": 2, "lr": 1e-3}) is None
    assert resume_conflict({"threads": 1, "lr": 1e-3}, {"threads": 1, "lr": 2e-3}) == "lr"
