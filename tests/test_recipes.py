"""Every shipped recipe parses with every value its comments offer.

The values are read from the recipes' own comments, so a comment that offers a value the config refuses
fails here (``rlhfkit dpo --config configs/dpo.yaml loss=dpo`` once did: the recipe set ``rpo_alpha``):

- command lines ``rlhfkit STAGE --config configs/X.yaml key=value …`` (in any recipe's comments);
- runs of ``key=value`` words in a recipe's prose (``loss=cdpo label_smoothing=0.1``);
- alternatives beside a key: ``key: default  # a | b | c …`` and ``(or: x)``.

Only parsing and validation run (``load_config``), never training.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlhfkit.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
_KEY = r"[A-Za-z_][\w.]*"
_PAIR = re.compile(rf"^({_KEY})=(\S+)$")


def config_class(recipe: Path):
    name = recipe.stem
    if name.startswith("sft"):
        from rlhfkit.trainers.sft import SFTConfig as cls
    elif name.startswith("reward"):
        from rlhfkit.trainers.reward import RewardConfig as cls
    elif name.startswith(("dpo", "kto", "orpo", "simpo")):
        from rlhfkit.trainers.dpo import DPOConfig as cls
    elif name.startswith(("ppo", "grpo", "rloo")):
        from rlhfkit.trainers.ppo_config import PPOConfig as cls
    elif name == "demo_rlvr":
        from rlhfkit.demo.rlvr import RLVRDemoConfig as cls
    elif name.startswith("demo"):
        from rlhfkit.demo.config import DemoConfig as cls
    elif name.startswith("iterate"):
        from rlhfkit.iterate_config import IterateConfig as cls
    else:
        raise AssertionError(f"{recipe.name}: no config class known for this recipe; add it here")
    return cls


def _pair(word: str) -> str | None:
    word = word.rstrip(".,;)`")  # a sentence's punctuation (or a code span's backtick) after the value
    return word if _PAIR.match(word) and "…" not in word else None


def _comment_lines(recipe: Path) -> list[str]:
    """Full-line comments (their indentation after ``#`` kept) with continuations (``\\``) joined."""
    out, pending = [], ""
    for line in recipe.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("#"):
            pending = ""
            continue
        text = pending + line.lstrip()[1:].rstrip() if not pending else pending + line.lstrip()[1:].strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        out.append(text)
    return out


def commands() -> list[tuple[str, list[str], str]]:
    """``(recipe name, overrides, where)`` of every ``rlhfkit … --config configs/X.yaml`` command in any
    recipe's comments, and every ``rlhfkit demo [--preset P]`` command."""
    from rlhfkit.demo import PRESETS

    found = []
    for recipe in sorted(CONFIGS.glob("*.yaml")):
        for text in _comment_lines(recipe):
            if not re.match(r"\s{2,}rlhfkit ", text):  # an indented command line, not prose
                continue
            for command in text.split("&&"):
                words = command.split("#")[0].split()
                if len(words) < 2 or words[0] != "rlhfkit":
                    continue
                target = None
                if "--config" in words:
                    target = Path(words[words.index("--config") + 1]).name
                elif words[1] == "demo":
                    preset = words[words.index("--preset") + 1] if "--preset" in words else "default"
                    target = PRESETS[preset]
                if target is None:
                    continue
                pairs = [p for p in map(_pair, words[2:]) if p]
                found.append((target, pairs, f"{recipe.name}: {command.strip()}"))
    return found


def prose_pairs() -> list[tuple[str, list[str], str]]:
    """Runs of consecutive ``key=value`` words in a recipe's comments outside command lines."""
    found = []
    for recipe in sorted(CONFIGS.glob("*.yaml")):
        for text in _comment_lines(recipe):
            if re.match(r"\s{2,}rlhfkit ", text):
                continue
            run: list[str] = []
            for word in text.split() + [""]:
                pair = _pair(word)
                if pair:
                    run.append(pair)
                    if word[-1] not in ",;.)":  # punctuation after a value ends the run
                        continue
                if run:
                    found.append((recipe.name, run, f"{recipe.name}: # … {' '.join(run)} …"))
                run = []
    return found


def inline_alternatives() -> list[tuple[str, list[str], str]]:
    """``key: value  # a | b | c …`` and ``# … (or: x)`` beside a key, with its nested path."""
    found = []
    for recipe in sorted(CONFIGS.glob("*.yaml")):
        stack: list[tuple[int, str]] = []
        for line in recipe.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^(\s*)([\w]+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
            if not match or line.lstrip().startswith("#"):
                continue
            indent, key, value, comment = len(match[1]), match[2], match[3], match[4] or ""
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([k for _, k in stack] + [key])
            if not value:
                stack.append((indent, key))
            alternatives = []
            head = comment.split(";")[0]
            if "|" in head:  # "eager | sdpa | flash_attention_2 …, for all four models": first words
                alternatives = [(w.replace("…", " ").replace(",", " ").split() or [""])[0] for w in head.split("|")]
            alternatives += re.findall(r"\bor: ([\w.-]+)", comment)
            for alt in alternatives:
                if re.fullmatch(r"[\w.-]+", alt):
                    found.append((recipe.name, [f"{path}={alt}"], f"{recipe.name}: {line.strip()}"))
    return found


CASES = commands() + prose_pairs() + inline_alternatives()


def test_the_comments_offer_what_we_expect():
    """The extraction itself finds the values the issue named (so an empty parametrisation cannot pass)."""
    offered = {(name, " ".join(pairs)) for name, pairs, _ in CASES}
    assert ("dpo.yaml", "loss=dpo beta=0.3 train.output_dir=runs/dpo_beta0.3") in offered
    assert ("dpo.yaml", "loss=cdpo label_smoothing=0.1") in offered
    assert ("dpo.yaml", "loss=ipo") in offered
    assert ("dpo.yaml", "model.attn_implementation=flash_attention_2") in offered
    assert ("ppo.yaml", "model.attn_implementation=flash_attention_2") in offered
    assert {("dpo_lora.yaml", "loss=dpo"), ("dpo_lora.yaml", "loss=ipo")} <= offered
    assert ("iterate.yaml", "labels.source=people") in offered
    assert ("iterate.yaml", "ppo_reference=sft") in offered
    assert ("sft.yaml", "model.path=.cache/rlhfkit/world-s0-llama-small/base "
            "data.train_file=.cache/rlhfkit/world-s0-llama-small/data/sft.jsonl") in offered
    assert {name for name, _, _ in CASES} >= {p.name for p in CONFIGS.glob("*.yaml")} - {"reward.yaml"}


@pytest.mark.parametrize(("recipe", "overrides", "where"), CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_recipe_parses_with_each_offered_value(recipe, overrides, where):
    path = CONFIGS / recipe
    load_config(config_class(path), path, overrides)  # raises ConfigError naming the key if refused


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_recipe_parses_as_shipped(recipe):
    load_config(config_class(CONFIGS / recipe), CONFIGS / recipe)
