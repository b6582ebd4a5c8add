"""``rlhfkit demo`` settings and bookkeeping: presets, recipe validation before any work, stage reuse and resume,
prompt choice (monitor prompts never trained on), held-out split by prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.demo import DemoConfig, load_demo_config, preset_path
from rlhfkit.demo.config import STAGES, stage_recipe
from rlhfkit.demo.pipeline import Context, choose_prompts, split_by_prompt, write_recipes
from rlhfkit.demo.runner import Runner, read_json
from rlhfkit.worlds import World

ROOT = Path(__file__).resolve().parents[1]


def test_default_preset_file_equals_the_built_in_defaults():
    from_file, built_in = load_demo_config("default"), DemoConfig()
    assert preset_path("default") == ROOT / "configs" / "demo.yaml"
    for stage in STAGES:  # the file spells the stage recipes out; they merge to the same thing
        assert stage_recipe(from_file, stage, {}) == stage_recipe(built_in, stage, {})
    for name in ("seed", "out", "threads", "world", "data", "annotators", "best_of_n", "hacking", "eval", "larger"):
        assert getattr(from_file, name) == getattr(built_in, name), name


def test_instructgpt_preset_is_the_default_plus_a_larger_model_at_least_8x_the_policies():
    from rlhfkit.models.tiny import build_tiny_model, count_parameters, train_tokenizer

    preset, default = load_demo_config("instructgpt"), DemoConfig()
    assert preset.larger.enabled and not default.larger.enabled
    for stage in STAGES:  # the small policies' recipes are the default preset's
        assert stage_recipe(preset, stage, {}) == stage_recipe(default, stage, {})
    assert preset.world == default.world and preset.data == default.data and preset.eval == default.eval
    larger = preset.larger.world(preset.world)
    # Same corpus, tokenizer, epochs, batch and seed: only the size and its learning rate differ.
    differing = {k for k, v in vars(larger).items() if v != getattr(preset.world, k)}
    assert differing == {"size", "lr"}
    tokenizer = train_tokenizer(["a tiny text to train on"] * 4, vocab_size=preset.world.vocab_size, style="world")
    small = count_parameters(build_tiny_model("llama", preset.world.size, tokenizer))
    big = count_parameters(build_tiny_model("llama", larger.size, tokenizer))
    assert big >= 8 * small, (big, small)


def test_quick_preset_overrides_a_few_keys_and_keeps_the_rest():
    quick = load_demo_config("quick")
    assert quick.world.size == "micro" and quick.eval.limit == 20
    recipe = stage_recipe(quick, "sft", {})
    assert recipe["train"]["lr"] == stage_recipe(DemoConfig(), "sft", {})["train"]["lr"]  # merged key by key
    assert stage_recipe(quick, "ppo", {})["train"]["max_steps"] < stage_recipe(DemoConfig(), "ppo", {})["train"][
        "max_steps"]


def test_overrides_and_out(tmp_path):
    cfg = load_demo_config("default", overrides=["seed=7", "sft.train.lr=5e-4"], out=str(tmp_path))
    assert cfg.seed == 7 and cfg.out == str(tmp_path)
    assert float(stage_recipe(cfg, "sft", {})["train"]["lr"]) == 5e-4  # typed when the stage config is built
    with pytest.raises(ConfigError, match="nonsense"):
        load_demo_config("default", overrides=["nonsense=1"])
    with pytest.raises(ConfigError, match="heldout_fraction"):
        load_demo_config("default", overrides=["data.heldout_fraction=0.9"])


def test_a_bad_stage_key_fails_before_any_stage_runs(tmp_path):
    cfg = load_demo_config("default", overrides=["ppo.train.lrr=1"], out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="lrr") as error:
        write_recipes(Context(cfg, Path(cfg.out)))
    assert "ppo.yaml" in str(error.value)  # names the resolved recipe file
    assert not any(p.name[:2].isdigit() for p in (tmp_path / "run").iterdir())  # no stage folder made


def test_recipes_point_each_stage_at_its_upstream_outputs(tmp_path):
    cfg = load_demo_config("default", out=str(tmp_path))
    configs = write_recipes(Context(cfg, tmp_path))
    assert configs["sft"].model.path == str(cfg.world.folder() / "base")
    assert configs["reward"].model.path == configs["dpo"].model.path == str(tmp_path / "02-sft" / "final")
    assert configs["reward"].data.train_file == configs["dpo"].data.train_file  # the SAME labels
    assert configs["ppo"].reward_model.path == str(tmp_path / "05-reward" / "final")
    assert {c.train.seed for c in configs.values()} == {cfg.seed}
    assert len({c.train.output_dir for c in configs.values()}) == 4
    assert (tmp_path / "recipes" / "ppo.yaml").exists()


def test_runner_reuses_resumes_and_restarts_on_changed_settings(tmp_path):
    calls = []

    def work(folder: Path) -> dict:
        calls.append(folder.name)
        (folder / "out.txt").write_text("x")
        return {"value": len(calls)}

    first = Runner(tmp_path, 2)
    a = first.stage(1, "a", "A", {"k": 1}, (), work)
    b = first.stage(2, "b", "B", {"k": 1}, ("a",), work)
    assert not a.reused and calls == ["01-a", "02-b"]
    assert read_json(tmp_path / "01-a" / "stage.json")["status"] == "complete"

    again = Runner(tmp_path, 2)  # same settings: nothing runs
    assert again.stage(1, "a", "A", {"k": 1}, (), work).reused
    assert again.stage(2, "b", "B", {"k": 1}, ("a",), work).summary == b.summary and len(calls) == 2

    killed = tmp_path / "02-b" / "stage.json"  # a stage killed mid-way keeps its folder and runs again in it
    killed.write_text(json.dumps({**read_json(killed), "status": "running"}))
    resumed = Runner(tmp_path, 2)
    resumed.stage(1, "a", "A", {"k": 1}, (), work)
    assert not resumed.stage(2, "b", "B", {"k": 1}, ("a",), work).reused and calls[-1] == "02-b"

    changed = Runner(tmp_path, 2)  # an upstream change flows downstream: both start over in fresh folders
    changed.stage(1, "a", "A", {"k": 2}, (), work)
    (tmp_path / "02-b" / "stale.txt").write_text("old")
    changed.stage(2, "b", "B", {"k": 1}, ("a",), work)
    assert calls[-2:] == ["01-a", "02-b"] and not (tmp_path / "02-b" / "stale.txt").exists()


def test_monitor_prompts_are_held_out_and_choices_are_deterministic():
    world = World.build(0)
    chosen = choose_prompts(world, seed=0, n_monitor=50, n_pairs=400, n_rl=300)
    monitor = {p.text for p in chosen["monitor"]}
    assert len(monitor) == 50 and {p.family for p in chosen["monitor"]} == set(
        ("helpful", "harmful", "benign", "unanswerable", "sycophancy"))
    assert not monitor & {p.text for p in chosen["pairs"] + chosen["rl"]}  # never trained on
    eval_texts = {p.text for p in world.eval_prompts}
    assert not eval_texts & {p.text for group in chosen.values() for p in group}  # train split only
    again = choose_prompts(world, seed=0, n_monitor=50, n_pairs=400, n_rl=300)
    assert [p.text for p in again["pairs"]] == [p.text for p in chosen["pairs"]]
    other = choose_prompts(world, seed=1, n_monitor=50, n_pairs=400, n_rl=300)
    assert [p.text for p in other["pairs"]] != [p.text for p in chosen["pairs"]]
    families = [p.family for p in chosen["pairs"]]
    assert min(families.count(f) for f in set(families)) > 400 / 5 * 0.6  # family-uniform draws


def test_heldout_split_never_puts_a_prompt_on_both_sides():
    pairs = [{"prompt": f"p{i % 37}", "a": "x", "b": "y"} for i in range(200)]
    train, heldout = split_by_prompt(pairs, 0.2, seed=0)
    assert len(train) + len(heldout) == 200
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    assert len({p["prompt"] for p in heldout}) == round(0.2 * 37)


def test_world_build_settings_name_the_bad_field():
    from rlhfkit.worlds.build import WorldBuildConfig

    with pytest.raises(ConfigError, match="attn_implementation: expected eager or sdpa, got 'flash'"):
        WorldBuildConfig(attn_implementation="flash").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mixed_precision: expected auto, no or bf16"):
        WorldBuildConfig(mixed_precision="fp16").validate()  # type: ignore[arg-type]
