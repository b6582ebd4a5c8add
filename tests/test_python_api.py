"""The Python API: ``import rlhfkit`` stays light, the stages run on in-memory data exactly as the command
line runs on files, configs build from a dict, a YAML path or keywords, and docs/python-api.md runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlhfkit

try:
    from stage_helpers import FAST_TRAIN, cli, colour_rows, model_dir, read_metrics
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import FAST_TRAIN, cli, colour_rows, model_dir, read_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_import_rlhfkit_imports_no_torch_and_exports_the_stages():
    code = ("import sys, rlhfkit; assert 'torch' not in sys.modules, 'torch'; "
            "assert not [m for m in sys.modules if m.startswith('rlhfkit.')], 'submodules'; "
            "print(sorted(n for n in rlhfkit.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("sft", "reward", "dpo", "ppo", "SFTConfig", "RewardConfig", "DPOConfig", "PPOConfig"):
        assert f"'{name}'" in out
    assert callable(rlhfkit.dpo) and rlhfkit.DPOConfig.__name__ == "DPOConfig"
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        rlhfkit.train  # noqa: B018


def test_configs_build_from_a_yaml_path_a_dict_and_keywords_alike():
    recipe = REPO / "configs" / "dpo.yaml"
    from_yaml = rlhfkit.DPOConfig.from_yaml(recipe, "beta=0.3", loss="dpo", model={"path": "m"})
    from_cli = rlhfkit.load_config(rlhfkit.DPOConfig, recipe, ["beta=0.3", "loss=dpo", "model.path=m"])
    assert from_yaml == from_cli
    as_dict = rlhfkit.build_config(rlhfkit.DPOConfig, {"model": {"path": "m"}, "train.lr": 3e-4})
    as_keywords = rlhfkit.DPOConfig.build(model={"path": "m"}, **{"train.lr": 3e-4})
    assert as_dict == as_keywords and as_dict.train.lr == 3e-4 and as_dict.train.output_dir == "runs/dpo"
    # a section given as a dict changes only the keys it names
    changed = rlhfkit.build_config(rlhfkit.DPOConfig, from_yaml, train={"lr": 1e-5})
    assert changed.train.lr == 1e-5 and changed.train.num_epochs == from_yaml.train.num_epochs
    with pytest.raises(rlhfkit.ConfigError, match="rpo_alpha is used only by loss=rpo"):
        rlhfkit.DPOConfig.build(model={"path": "m"}, loss="dpo", rpo_alpha=0.5)
    with pytest.raises(rlhfkit.ConfigError, match="unknown key train.lrr"):
        rlhfkit.SFTConfig.build(train={"lrr": 1})


def test_the_api_on_a_dataset_and_the_cli_on_a_file_take_the_same_steps(tmp_path):
    datasets = pytest.importorskip("datasets")
    base = model_dir(tmp_path)
    rows = colour_rows(8)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["data.max_length=48", "data.max_prompt_length=24", "train.max_steps=3", "train.per_device_batch_size=4",
              *FAST_TRAIN]
    assert cli(["sft", f"model.path={base}", f"data.train_file={demos}", f"train.output_dir={tmp_path / 'cli'}",
                *common]) == 0
    settings = {key: value for key, _, value in (item.partition("=") for item in common)}
    settings = {k: (int(v) if v.isdigit() else {"false": False}.get(v, v)) for k, v in settings.items()}
    result = rlhfkit.sft({"model": {"path": str(base)}}, train_dataset=datasets.Dataset.from_list(rows),
                         **{"train.output_dir": str(tmp_path / "api")}, **settings)
    assert result.status == "completed" and (result.final_dir / "config.json").is_file()
    by_cli, by_api = read_metrics(tmp_path / "cli"), read_metrics(tmp_path / "api")
    assert [m["step"] for m in by_api] == [1, 2, 3]
    assert [m["train/loss"] for m in by_api] == [m["train/loss"] for m in by_cli]


def test_bad_rows_in_memory_fail_naming_the_argument_before_anything_is_written(tmp_path):
    base = model_dir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(rlhfkit.DataValidationError) as info:
        rlhfkit.sft(model={"path": str(base)}, train_dataset=[{"prompt": "hi", "completion": "ok"}, {"prompt": "x"}],
                    train={"output_dir": str(out)})
    assert info.value.problems == ['train_dataset row 1, field "completion": missing (the row has keys "prompt").']
    assert not out.exists()
    with pytest.raises(rlhfkit.ConfigError, match="data.train_file is required"):
        rlhfkit.sft(model={"path": str(base)}, train={"output_dir": str(out)})


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_the_python_api_doc_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(REPO / "docs" / "python-api.md")
    assert len(blocks) == 6  # sft, reward, dpo, ppo, grpo, errors
    base = model_dir(tmp_path)
    assert 'BASE = "runs/world/base"' in blocks[0]
    blocks[0] = blocks[0].replace('BASE = "runs/world/base"', f"BASE = {str(base)!r}")
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(work)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102 — the doc's own code
    for name in ("sft", "rm", "dpo", "ppo", "grpo"):
        result = namespace[name]
        assert result.status == "completed", name
        assert (work / result.final_dir / "config.json").is_file(), name
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "['train_dataset row 0, field \"completion\": empty text.']"
    assert not (work / "runs" / "api" / "bad").exists()
