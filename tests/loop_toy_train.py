"""A tiny training run on the shared loop, run as a real subprocess by the kill-and-resume tests.

    python tests/loop_toy_train.py train.output_dir=DIR train.save_every=4 toy.model=mlp …

Every global RNG stream matters to the result (so a resume that forgets one is caught): the collate adds
NumPy noise to the inputs, the step draws a Python ``random`` factor, and the model uses dropout (torch).

Only the tests set these environment variables, to crash the run at a chosen moment with SIGKILL:

* ``LOOP_TOY_KILL_AFTER_STEP=k`` — at the start of step k + 1 (step k finished and, if due, checkpointed);
* ``LOOP_TOY_KILL_DURING_SAVE=k`` — while checkpoint k is written: its files are there, its manifest not.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rlhfkit.config import load_config
from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine.determinism import seed_everything
from rlhfkit.engine.loop import TrainLoop
from rlhfkit.engine.train_config import TrainConfig

FEATURES, CLASSES, SEQ_LEN = 8, 4, 12


@dataclass
class ToySettings:
    model: Literal["mlp", "llama"] = "mlp"
    num_examples: int = 44
    data_seed: int = 1234  # the dataset itself never changes between runs
    randomness: bool = True  # false: no dropout, noise or jitter (to compare runs over different process counts)


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    toy: ToySettings = field(default_factory=ToySettings)


class Counter:
    """Stage state saved in checkpoints: how many micro-batches this process has seen."""

    def __init__(self) -> None:
        self.micro_batches = 0

    def state_dict(self) -> dict:
        return {"micro_batches": self.micro_batches}

    def load_state_dict(self, state: dict) -> None:
        self.micro_batches = state["micro_batches"]


def mlp_setup(settings: ToySettings):
    g = torch.Generator().manual_seed(settings.data_seed)
    x = torch.randn(settings.num_examples, FEATURES, generator=g)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=g)).argmax(-1)
    dataset = [{"x": x[i], "y": y[i]} for i in range(settings.num_examples)]
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.LayerNorm(32), torch.nn.GELU(),
                                torch.nn.Dropout(0.2 if settings.randomness else 0.0),
                                torch.nn.Linear(32, CLASSES))

    def collate(rows):
        x = torch.stack([r["x"] for r in rows])
        if settings.randomness:
            x = x + torch.from_numpy(np.random.normal(0.0, 0.05, size=tuple(x.shape))).float()
        return {"x": x, "y": torch.stack([r["y"] for r in rows])}

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    return dataset, model, collate, loss_fn


def llama_setup(settings: ToySettings):
    from rlhfkit.models.tiny import build_tiny_model, train_tokenizer

    text = ["the quick brown fox jumps over the lazy dog", "a tiny model learns a tiny language"]
    tokenizer = train_tokenizer(text * 10, vocab_size=300)
    model = build_tiny_model("llama", "micro", tokenizer, seed=0)
    model.config.attention_dropout = 0.2  # so that the torch RNG matters
    g = torch.Generator().manual_seed(settings.data_seed)
    ids = torch.randint(3, len(tokenizer), (settings.num_examples, SEQ_LEN), generator=g)
    dataset = [{"input_ids": ids[i]} for i in range(settings.num_examples)]

    def collate(rows):
        ids = torch.stack([r["input_ids"] for r in rows])
        keep = torch.from_numpy(np.random.random(size=tuple(ids.shape)) > 0.1)  # NumPy stream
        return {"input_ids": ids, "labels": torch.where(keep, ids, -100)}

    def loss_fn(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    return dataset, model, collate, loss_fn


def install_test_kills() -> None:
    kill_after = os.environ.get("LOOP_TOY_KILL_AFTER_STEP")
    kill_during_save = os.environ.get("LOOP_TOY_KILL_DURING_SAVE")
    if kill_during_save:
        original = ckpt.write_manifest

        def write_manifest_then_die(tmp, step, extra=None):
            if step == int(kill_during_save):
                os.kill(os.getpid(), signal.SIGKILL)
            original(tmp, step, extra)

        ckpt.write_manifest = write_manifest_then_die
    return int(kill_after) if kill_after else None


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    config = load_config(ToyConfig, None, argv)
    kill_after = install_test_kills()
    seed_everything(config.train.seed)
    setup = llama_setup if config.toy.model == "llama" else mlp_setup
    dataset, model, collate, loss_fn = setup(config.toy)
    counter = Counter()
    loop = TrainLoop(config.train, model, run_config=config, stage_state={"counter": counter})

    def step_fn(model, batch):
        if kill_after is not None and loop.step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        counter.micro_batches += 1
        jitter = 1.0 + 0.01 * random.random() if config.toy.randomness else 1.0  # Python stream
        loss = loss_fn(model, batch) * jitter
        return loss, {"toy/micro_batches": float(counter.micro_batches)}

    summary = loop.fit(dataset, collate, step_fn)
    print(f"status={summary.status} step={summary.step}")


if __name__ == "__main__":
    main(sys.argv[1:])
