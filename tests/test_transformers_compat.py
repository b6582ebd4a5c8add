"""Forward compatibility with transformers (issue 15): a PPO run — rollouts on the generation engine, scoring,
updates, eval — emits no deprecation or future warning, and pyproject.toml bounds transformers from above by a
version whose announced removals the code does not depend on. CI installs the newest version the bound allows,
so these tests run on it."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder

from rlhfkit.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def transformers_requirement() -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in dependencies if Requirement(d).name == "transformers")


def test_transformers_has_an_upper_bound_and_the_installed_version_is_inside_it():
    requirement = transformers_requirement()
    upper = [s for s in requirement.specifier if s.operator == "<"]
    assert upper, f"pyproject.toml: {requirement} has no upper bound"
    assert requirement.specifier.contains(transformers.__version__), (transformers.__version__, str(requirement))
    # the bound stops before 5.40, where transformers removes the `past_key_values` name (announced in 5.2x)
    assert Version(upper[0].version) <= Version("5.40")


@pytest.mark.slow  # a PPO step through the CLI (~25 s); the engine's own check is in test_generate_kernels.py
def test_a_ppo_run_emits_no_deprecation_or_future_warning(tmp_path):
    args = ["ppo", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
            f"data.train_file={save_prompts(tmp_path)}", f"data.eval_file={save_prompts(tmp_path, 4, 'eval.jsonl')}",
            f"train.output_dir={tmp_path / 'out'}", "train.per_device_batch_size=4", "train.max_steps=1",
            "train.progress_bar=false", "ppo.minibatch_size=2", "rollout.max_new_tokens=6",
            "data.max_prompt_length=32", "data.max_length=64", "rollout.print_samples=0"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli(args) == 0
    bad = [f"{w.category.__name__} ({w.filename}:{w.lineno}): {w.message}" for w in caught
           if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning))]
    assert not bad, "\n".join(bad)
