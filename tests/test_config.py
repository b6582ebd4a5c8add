"""Typed configs: YAML + key=value overrides, every bad key or value named in one sentence."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlhfkit.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-3
    """learning rate"""
    schedule: Literal["linear", "cosine"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Stage:
    model: str = "base"
    steps: int = 10
    lora: bool = False
    tag: str | None = None
    optim: Optim = field(default_factory=Optim)

    def validate(self):
        if self.lora and self.steps < 2:
            raise ConfigError("lora=true needs steps >= 2")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_then_file_then_overrides(tmp_path):
    p = write(tmp_path, "steps: 20\noptim:\n  lr: 3e-4\n")
    cfg = load_config(Stage, p, ["optim.schedule=linear", "lora=true", "tag=run1"])
    assert cfg.steps == 20 and cfg.optim.lr == 3e-4 and cfg.optim.schedule == "linear"
    assert cfg.lora is True and cfg.tag == "run1" and cfg.model == "base"
    assert cfg.optim.betas == [0.9, 0.999]


def test_override_beats_file(tmp_path):
    p = write(tmp_path, "steps: 20\n")
    assert load_config(Stage, p, ["steps=5"]).steps == 5


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("stepz: 3\n", [], "unknown key stepz"),
        ("", ["optim.lrr=1"], "unknown key optim.lrr"),
        ("steps: three\n", [], "steps: expected an integer"),
        ("", ["steps=1.5"], "steps: expected an integer"),
        ("", ["lora=yes please"], "lora: expected true or false"),
        ("", ["optim.schedule=step"], "optim.schedule: expected one of"),
        ("optim: 3\n", [], "optim: expected a mapping"),
        ("", ["lora=true", "steps=1"], "lora=true needs steps >= 2"),
        ("", ["steps"], "expected key=value"),
        ("- a\n- b\n", [], "mapping of keys at the top level"),
        ("steps: [1\n", [], "line"),
    ],
)
def test_bad_config_is_one_sentence_naming_file_and_key(tmp_path, text, overrides, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(Stage, p, overrides)
    message = str(exc.value)
    assert needle in message
    assert str(p) in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(Stage, tmp_path / "nope.yaml")


def test_null_allowed_only_for_optional(tmp_path):
    assert load_config(Stage, None, ["tag=null"]).tag is None
    with pytest.raises(ConfigError, match="steps"):
        load_config(Stage, None, ["steps=null"])


@dataclass
class Precision:
    mixed_precision: Literal["no", "bf16"] = "bf16"
    switch: Literal["on", "off", "auto"] = "auto"


@pytest.mark.parametrize("source", ["file", "override"])
def test_yaml_boolean_words_fill_a_literal_that_spells_them(tmp_path, source):
    # YAML 1.1 reads the bare words no/off/on as booleans; a Literal offering the word means the word.
    text = "mixed_precision: no\nswitch: off\n" if source == "file" else ""
    overrides = [] if source == "file" else ["mixed_precision=no", "switch=on"]
    cfg = load_config(Precision, write(tmp_path, text), overrides)
    assert cfg.mixed_precision == "no"
    assert cfg.switch == ("off" if source == "file" else "on")


def test_yaml_boolean_not_among_the_literal_words_is_still_an_error(tmp_path):
    # `true` has no spelling in ("no", "bf16"): it must not be silently mapped to some choice.
    with pytest.raises(ConfigError, match="mixed_precision: expected one of"):
        load_config(Precision, write(tmp_path, "mixed_precision: true\n"), [])


def test_a_section_given_in_part_keeps_the_stage_defaults_for_the_rest():
    """DPOConfig's train section defaults to output_dir runs/dpo and lr 1e-6; setting one key of it (in a
    recipe, an override or the Python API) must not fall back to TrainConfig's own defaults for the others."""
    from rlhfkit.trainers.dpo import DPOConfig

    cfg = load_config(DPOConfig, None, ["model.path=m", "train.seed=3"])
    assert (cfg.train.seed, cfg.train.output_dir, cfg.train.lr) == (3, "runs/dpo", 1e-6)
