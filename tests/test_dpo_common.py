"""Shared builders for the tests/test_dpo*.py files (no tests here): a micro Llama, preference files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer

torch.set_num_threads(1)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "said", "what", "is", "one", "two", "three", "plus",
         "answer", "yes", "no", "dog", "ran", "far"]
MARK = "hello"  # the word every chosen response has and no rejected response has
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9)) + f" {MARK} {i}"
         for i in range(300)]


def tokenizer(style: str = "world"):
    return train_tokenizer(TEXTS, vocab_size=300, style=style)


def model_dir(root: Path, seed: int = 0, style: str = "world", arch: str = "llama") -> Path:
    """A saved micro model + tokenizer folder (random weights of ``seed``)."""
    out = root / f"model-{arch}-{style}-{seed}"
    if not (out / "config.json").exists():
        tok = tokenizer(style)
        save_tiny(build_tiny_model(arch, "micro", tok, seed=seed), tok, out)
    return out


def learnable_rows(n: int, seed: int) -> list[dict]:
    """Pairs whose chosen response is the rejected one with ``MARK`` inserted somewhere: a preference a
    micro model can learn and that generalises to new pairs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
        at = rng.randint(0, len(words))
        rows.append({"prompt": f"say {rng.choice(WORDS)} {rng.choice(WORDS)} {seed}-{i}",
                     "chosen": " ".join(words[:at] + [MARK] + words[at:]), "rejected": " ".join(words)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_metrics(output_dir: Path) -> list[dict]:
    """The per-step lines of metrics.jsonl (event lines left out)."""
    lines = [json.loads(x) for x in (output_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if "event" not in x]


def cli_args(root: Path, out: str, *extra: str, model: Path | None = None) -> list[str]:
    """``rlhfkit dpo`` arguments on the files written by :func:`make_data`."""
    return ["dpo", f"model.path={model or model_dir(root)}", f"data.train_file={root / 'train.jsonl'}",
            f"data.eval_file={root / 'eval.jsonl'}", f"train.output_dir={root / out}",
            "train.progress_bar=false", "train.per_device_batch_size=8", "train.lr=3e-3",
            "data.max_length=64", "data.max_prompt_length=32", *extra]


def make_data(root: Path, n_train: int = 48, n_eval: int = 24) -> None:
    write_jsonl(root / "train.jsonl", learnable_rows(n_train, seed=1))
    write_jsonl(root / "eval.jsonl", learnable_rows(n_eval, seed=2))
