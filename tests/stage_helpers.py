"""Shared helpers for the SFT, reward-model and pretraining tests: tiny model folders, data files, the CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path

WORDS = [
    "red", "blue", "green", "yellow", "black", "white",  # colours: WORDS[:6]
    "cat", "dog", "bird", "fish", "tree", "rock", "sun", "moon", "star", "river", "hill", "lake",  # things: [6:18]
    "good", "bad", "yes", "no", "maybe", "the", "a", "is", "of", "what", "colour", "answer", "please", "thanks",
    "sorry",
]
TOKENIZER_TEXTS = [
    " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 7)) + "." for i in range(300)
] + [f"what is the colour of the {w}? the {w} is {c}." for w in WORDS[6:18] for c in WORDS[:6]]

FAST_TRAIN = ["train.progress_bar=false", "train.save_every=0", "train.warmup_steps=0",
              "train.lr_schedule=constant"]


@functools.cache
def tokenizer(style: str = "world"):
    from rlhfkit.models.tiny import train_tokenizer

    return train_tokenizer(TOKENIZER_TEXTS, vocab_size=320, style=style)


def model_dir(root: Path, arch: str = "llama", style: str = "world", size: str = "micro", seed: int = 0) -> Path:
    """A saved tiny causal LM + tokenizer folder (built once per root/arch/style/size/seed)."""
    from rlhfkit.models.tiny import build_tiny_model, save_tiny

    out = Path(root) / f"base-{arch}-{style}-{size}-{seed}"
    if not (out / "config.json").exists():
        tok = tokenizer(style)
        save_tiny(build_tiny_model(arch, size, tok, seed=seed), tok, out)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path = Path(path)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def colour_rows(n: int = 8) -> list[dict]:
    """A memorisable SFT set: the colour of each thing."""
    things, colours = WORDS[6:18], WORDS[:6]
    return [{"prompt": f"what is the colour of the {things[i % len(things)]}?",
             "response": f"the {things[i % len(things)]} is {colours[(i * 5) % len(colours)]}."}
            for i in range(n)]


def cli(argv: list[str]) -> int:
    from rlhfkit.cli import main

    return main(argv)


def read_metrics(output_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "train/loss" in r]
