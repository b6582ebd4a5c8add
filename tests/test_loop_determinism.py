"""Data order, seeds, the learning-rate schedule and resume-compatibility rules — pure parts of the loop."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.order import DataOrder, derive_seed, epoch_permutation, shard_step
from rlhfkit.engine.determinism import capture_rng_state, restore_rng_state, seed_everything
from rlhfkit.engine.loop_support import config_record, lr_multiplier, resume_problem, train_prefix
from rlhfkit.engine.train_config import TrainConfig

# ----------------------------------------------------------------------------- data order


def walk(order: DataOrder, steps: int, epoch: int = 0, position: int = 0):
    """(epoch, indices) of ``steps`` consecutive steps from (epoch, position)."""
    out = []
    for _ in range(steps):
        indices = order.step_indices(epoch, position)
        out.append((epoch, indices))
        epoch, position = order.advance(epoch, position, len(indices))
    return out, (epoch, position)


def test_epoch_permutation_is_a_seeded_permutation():
    p = epoch_permutation(seed=3, epoch=0, num_examples=50)
    assert sorted(p) == list(range(50))
    assert p == epoch_permutation(3, 0, 50)
    assert p != epoch_permutation(3, 1, 50)  # a new order each epoch
    assert p != epoch_permutation(4, 0, 50)
    assert epoch_permutation(3, 0, 50, shuffle=False) == list(range(50))


@pytest.mark.parametrize("num_examples,global_batch", [(10, 4), (12, 4), (7, 3), (5, 8)])
def test_every_example_exactly_once_per_epoch_without_drop_last(num_examples, global_batch):
    order = DataOrder(num_examples, global_batch, seed=0)
    steps, end = walk(order, 2 * order.steps_per_epoch)
    assert order.steps_per_epoch == math.ceil(num_examples / global_batch)
    assert end == (2, 0)  # two whole epochs, ending exactly at the boundary
    for epoch in (0, 1):
        seen = [i for e, indices in steps if e == epoch for i in indices]
        assert seen == epoch_permutation(0, epoch, num_examples)  # in permutation order, none repeated
    sizes = [len(indices) for _e, indices in steps[: order.steps_per_epoch]]
    assert sizes[:-1] == [global_batch] * (len(sizes) - 1)
    assert sizes[-1] == num_examples - global_batch * (len(sizes) - 1)  # the last step is the remainder


def test_drop_last_drops_only_the_remainder_and_starts_the_next_epoch():
    order = DataOrder(10, 4, seed=1, drop_last=True)
    steps, end = walk(order, 2)
    assert order.steps_per_epoch == 2 and end == (1, 0)
    assert [i for _e, ix in steps for i in ix] == epoch_permutation(1, 0, 10)[:8]
    with pytest.raises(ValueError, match="drop_last=true would drop them all"):
        DataOrder(3, 4, seed=0, drop_last=True)
    with pytest.raises(ValueError, match="empty"):
        DataOrder(0, 4, seed=0)


def test_resuming_from_any_position_continues_with_the_same_steps():
    order = DataOrder(11, 4, seed=5)
    full, _ = walk(order, 9)
    epoch, position = 0, 0
    for k in range(9):  # a "resume" after k steps only knows (epoch, position)
        rest, _ = walk(order, 9 - k, epoch, position)
        assert rest == full[k:]
        epoch, position = order.advance(epoch, position, len(full[k][1]))


def test_shards_with_one_process_are_micro_batches_of_the_step():
    indices = list(range(100, 112))
    assert shard_step(indices, 1, 0, 4) == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109, 110, 111]]
    assert shard_step(indices[:5], 1, 0, 4) == [[100, 101, 102], [103, 104]]  # ragged step: near-equal


@pytest.mark.parametrize("n,processes,per_device", [(8, 2, 2), (7, 2, 2), (5, 3, 1), (1, 2, 4), (9, 4, 2)])
def test_shards_over_processes_cover_the_global_batch(n, processes, per_device):
    indices = list(range(n))
    shards = [shard_step(indices, processes, r, per_device) for r in range(processes)]
    flat = [i for shard in shards for micro in shard for i in micro]
    assert len({len(s) for s in shards}) == 1  # same number of micro-batches on every rank (DDP)
    assert sorted(set(flat)) == indices  # every example of the step is used …
    padding = len(flat) - n
    assert padding == (-n) % processes  # … and only the padding to a multiple of the processes repeats
    if n % processes == 0:
        assert sorted(flat) == indices


# ----------------------------------------------------------------------------- seeds and RNG state


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_reproduces_each_stream_and_streams_differ():
    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert draws() != first
    seed_everything(7, rank=1)
    assert draws() != first  # per-process streams differ
    assert len({derive_seed(7, s) for s in ("python", "numpy", "torch", "data")}) == 4
    assert derive_seed(7, "numpy", bits=32) < 2**32


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    seed_everything(3)
    draws()
    state = capture_rng_state()
    expected = [draws() for _ in range(3)]
    torch.save(state, tmp_path / "rng.pt")
    seed_everything(99)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert [draws() for _ in range(3)] == expected


# ----------------------------------------------------------------------------- learning-rate schedule


def test_lr_multiplier_hand_worked():
    # warm-up 2, 6 steps: 1/2, 2/2, then decay over 4 steps with p = 0, 1/4, 2/4, 3/4
    linear = [lr_multiplier(s, "linear", 2, 6) for s in range(1, 7)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    cosine = [lr_multiplier(s, "cosine", 2, 6) for s in range(1, 7)]
    expected = [0.5, 1.0] + [(1 + math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 0.75)]
    assert cosine == pytest.approx(expected)
    assert [lr_multiplier(s, "constant", 3, 6) for s in range(1, 7)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert lr_multiplier(1, "linear", 0, 1) == 1.0  # a one-step run learns at the peak lr
    with pytest.raises(ValueError, match="valid: linear, cosine, constant"):
        lr_multiplier(1, "exp", 0, 5)


# ----------------------------------------------------------------------------- config


def test_train_config_rules_name_the_key(tmp_path):
    assert load_config(TrainConfig, None, ["lr=3e-4", "report_to=[jsonl,tensorboard]"]).lr == 3e-4
    cases = {
        "warmup_steps=5 warmup_ratio=0.1": "warmup_steps and warmup_ratio",
        "report_to=[jsonl,comet]": "report_to",
        "nonfinite=ignore": "nonfinite",
        "per_device_batch_size=0": "per_device_batch_size",
        "learning_rate=1": "unknown key learning_rate",
        "max_grad_norm=0": "max_grad_norm",
        "lr_schedule=exp": "lr_schedule",
    }
    for overrides, fragment in cases.items():
        with pytest.raises(ConfigError, match=fragment):
            load_config(TrainConfig, None, overrides.split())


@dataclass
class EvalSettings:
    num_prompts: int = 10
    temperature: float = 1.0


@dataclass
class StageConfig:
    model: str = "tiny"
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)


def problem(saved: StageConfig, now: StageConfig, num_examples=(100, 100), processes=(1, 1), safe=()):
    def data(cfg, n, p):
        return {"num_examples": n, "global_batch_size": cfg.train.per_device_batch_size
                * cfg.train.grad_accum_steps * p, "num_processes": p}

    record = config_record(saved.train, saved, data(saved, num_examples[0], processes[0]))
    return resume_problem(record, data(now, num_examples[1], processes[1]), now.train, now, safe)


def stage(**train) -> StageConfig:
    return StageConfig(train=TrainConfig(**train))


def test_resume_rules():
    assert train_prefix(stage()) == "train."
    assert problem(stage(), stage()) is None
    assert "train.lr was 5e-05 in the checkpoint and is 0.001 now" in problem(stage(), stage(lr=1e-3))
    assert problem(stage(), stage(log_every=5, save_every=7, output_dir="moved", nonfinite="skip")) is None
    # the out-of-memory fix: same global batch, split differently — also over more processes
    assert problem(stage(per_device_batch_size=8), stage(per_device_batch_size=4, grad_accum_steps=2)) is None
    assert problem(stage(per_device_batch_size=8), stage(per_device_batch_size=4), processes=(1, 2)) is None
    assert "global batch" in problem(stage(per_device_batch_size=8), stage(per_device_batch_size=4))
    assert "dataset of 100 examples" in problem(stage(), stage(), num_examples=(100, 99))
    # run length: free with a constant schedule, not with a decaying one
    assert "schedule depends on the run length" in problem(stage(max_steps=10), stage(max_steps=20))
    assert problem(stage(max_steps=10, lr_schedule="constant"), stage(max_steps=20, lr_schedule="constant")) is None
    # the stage's own keys: named in full, unless the stage declares them safe
    changed = StageConfig(eval=EvalSettings(num_prompts=3))
    assert problem(stage(), changed).startswith("eval.num_prompts was 10")
    assert problem(stage(), changed, safe=("eval",)) is None
    assert problem(stage(), StageConfig(model="other")).startswith("model was 'tiny'")
