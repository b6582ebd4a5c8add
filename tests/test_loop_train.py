"""The training loop in-process on a small MLP: accumulation, guards, seeds, resume, logs, OOM."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.order import DataOrder
from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine.determinism import seed_everything
from rlhfkit.engine.loop import NonFiniteError, TrainingOOMError, TrainLoop
from rlhfkit.engine.loop_support import lr_multiplier
from rlhfkit.engine.metrics_log import read_metrics
from rlhfkit.engine.train_config import TrainConfig

FEATURES, CLASSES = 6, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one thread is many times faster than two contending ones.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Stage:
    train: TrainConfig = field(default_factory=TrainConfig)
    note: str = "mlp"


def build_mlp(seed=0, dropout=0.0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.LayerNorm(16), torch.nn.GELU(),
                                   torch.nn.Dropout(dropout), torch.nn.Linear(16, CLASSES))


def dataset(n=20):
    g = torch.Generator().manual_seed(99)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def collate(rows):
    return {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}


def noisy_collate(rows):  # uses the NumPy stream
    batch = collate(rows)
    batch["x"] = batch["x"] + torch.from_numpy(np.random.normal(0, 0.1, tuple(batch["x"].shape))).float()
    return batch


def ce_step(model, batch):
    return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"]), {}


def config(tmp_path, name="run", **overrides):
    values = dict(output_dir=str(tmp_path / name), progress_bar=False, lr=0.05, save_every=0)
    values.update(overrides)
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def train(tmp_path, name="run", *, model=None, data=None, step=None, collate_fn=collate, wrap=None,
          weight_fn=None, **overrides):
    """Fit and return (loop, summary). ``wrap(loop, step_fn)`` may return a step_fn that reads the loop."""
    cfg = config(tmp_path, name, **overrides)
    model = model if model is not None else build_mlp()
    loop = TrainLoop(cfg, model, run_config=Stage(train=cfg))
    step_fn = step or ce_step
    if wrap is not None:
        step_fn = wrap(loop, step_fn)
    summary = loop.fit(data if data is not None else dataset(), collate_fn, step_fn, weight_fn=weight_fn)
    return loop, summary


def step_rows(output_dir):
    return [r for r in read_metrics(output_dir / "metrics.jsonl") if "event" not in r]


def losses(output_dir):
    return [r["train/loss"] for r in step_rows(output_dir)]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(a, b, atol=1e-6):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def at_step(k, action):
    """A wrap that runs ``action(loop)`` in the step_fn of step k (when k − 1 steps are complete)."""
    def wrap(loop, step_fn):
        def wrapped(model, batch):
            if loop.step == k - 1:
                result = action(loop)
                if result is not None:
                    return result(model, batch)
            return step_fn(model, batch)
        return wrapped
    return wrap


def crash(_loop):
    raise RuntimeError("simulated crash")


# ----------------------------------------------------------------------------- accumulation


def test_accumulation_and_a_ragged_last_step_equal_one_big_batch(tmp_path):
    # 11 examples, global batch 6: step 2 has the remaining 5, split [3, 2], [2, 2, 1] or [5].
    results = {}
    for per_device, accum in [(6, 1), (3, 2), (2, 3)]:
        loop, _ = train(tmp_path, f"b{per_device}", per_device_batch_size=per_device, grad_accum_steps=accum,
                        max_steps=2, data=dataset(11), weight_decay=0.1, max_grad_norm=0.5)
        results[(per_device, accum)] = (params(loop.model), losses(loop.output_dir))
    reference_params, reference_losses = results[(6, 1)]
    for other_params, other_losses in results.values():
        assert_params_close(other_params, reference_params)
        np.testing.assert_allclose(other_losses, reference_losses, atol=1e-6)

    # Independent computation: the same two steps by hand with plain torch.
    model, data = build_mlp(), dataset(11)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.05,
                            weight_decay=0.1)
    order, epoch, position = DataOrder(11, 6, seed=0), 0, 0
    for number in (1, 2):
        indices = order.step_indices(epoch, position)
        loss, _ = ce_step(model, collate([data[i] for i in indices]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        for group in opt.param_groups:
            group["lr"] = 0.05 * lr_multiplier(number, "linear", 0, 2)
        opt.step()
        opt.zero_grad()
        epoch, position = order.advance(epoch, position, len(indices))
    assert_params_close(params(model), reference_params)


def token_data():
    g = torch.Generator().manual_seed(5)
    lengths = [1, 6, 2, 7]  # very unequal token counts: a per-example mean differs from a token mean
    return [{"ids": torch.randint(0, 12, (n,), generator=g)} for n in lengths]


def pad(rows):
    width = max(len(r["ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r["ids"])], mask[i, : len(r["ids"])] = r["ids"], True
    return {"ids": ids, "mask": mask}


class TokenModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed, self.out = torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12)


def token_mean_step(model, batch):
    logits = model.out(model.embed(batch["ids"]))  # (B, T, V): predict the token itself
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["ids"], reduction="none")
    return (nll * batch["mask"]).sum() / batch["mask"].sum(), {}


def test_weight_fn_makes_a_token_mean_exact_under_accumulation(tmp_path):
    def run(name, per_device, accum, weight_fn):
        loop, _ = train(tmp_path, name, model=TokenModel(), data=token_data(), collate_fn=pad,
                        step=token_mean_step, per_device_batch_size=per_device, grad_accum_steps=accum,
                        max_steps=1, shuffle=False, weight_fn=weight_fn)
        return params(loop.model), losses(loop.output_dir)[0]

    def tokens(batch):
        return batch["mask"].sum()

    whole, whole_loss = run("whole", 4, 1, tokens)
    split, split_loss = run("split", 1, 4, tokens)
    assert_params_close(split, whole)
    assert split_loss == pytest.approx(whole_loss, abs=1e-6)
    unweighted, _ = run("unweighted", 1, 4, None)  # per-example weights: a different (wrong) mean
    assert max(float((a - b).abs().max()) for a, b in zip(unweighted, whole)) > 1e-4


# ----------------------------------------------------------------------------- non-finite guard


def nan_loss(_loop):
    return lambda model, batch: (ce_step(model, batch)[0] * float("nan"), {})


def test_nan_loss_stops_naming_the_step_with_no_checkpoint_after_it(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 3 .*lower lr"):
        train(tmp_path, wrap=at_step(3, nan_loss), save_every=1, save_total_limit=10,
              per_device_batch_size=4)
    out = tmp_path / "run"
    assert [p.name for _s, p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert [r["step"] for r in step_rows(out)] == [1, 2]
    events = [r for r in read_metrics(out / "metrics.jsonl") if "event" in r]
    assert events[0] == {"event": "nonfinite", "step": 3, "kind": "loss", "action": "stop"}
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "error"


def test_skip_leaves_parameters_bit_identical_and_is_counted(tmp_path):
    seen = {}

    def record(name):
        def action(loop):
            seen[name] = params(loop.model)
            seen[name + "_adam_steps"] = [float(s["step"]) for s in loop.optimizer.state.values()]
        return action

    def wrap(loop, step_fn):
        step_fn = at_step(3, lambda lp: (record("before")(lp), nan_loss(lp))[1])(loop, step_fn)
        return at_step(4, record("after"))(loop, step_fn)

    train(tmp_path, wrap=wrap, nonfinite="skip", save_every=1, save_total_limit=10, max_steps=5,
          per_device_batch_size=4)
    for before, after in zip(seen["before"], seen["after"], strict=True):
        assert torch.equal(before, after)  # bit-identical across the skipped step
    assert seen["before_adam_steps"] == seen["after_adam_steps"] == [2.0] * 6  # Adam state untouched too
    rows = step_rows(tmp_path / "run")
    assert [r["train/skipped_updates"] for r in rows] == [0, 0, 1, 0, 0]
    assert [r["train/skipped_total"] for r in rows] == [0, 0, 1, 1, 1]
    assert rows[2]["train/loss"] is None and rows[2]["train/updates"] == 0
    # no checkpoint on the skipped step: the one due there is written at the next step
    steps = [s for s, _p in ckpt.list_checkpoints(tmp_path / "run")]
    assert steps == [1, 2, 4, 5]


def test_a_non_finite_gradient_with_a_finite_loss_is_caught(tmp_path):
    def inf_grad(_loop):
        def step_fn(model, batch):
            loss, _ = ce_step(model, batch)
            # sqrt at 0: the value is 0 (finite loss) but its gradient is infinite
            return loss + torch.sqrt(model[0].weight.sum() * 0.0), {}
        return step_fn

    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(nan\) at step 2"):
        train(tmp_path, wrap=at_step(2, inf_grad))


def test_skip_stops_after_max_consecutive_skips(tmp_path):
    def wrap(loop, step_fn):
        def wrapped(model, batch):
            return nan_loss(loop)(model, batch) if loop.step >= 2 else step_fn(model, batch)
        return wrapped

    with pytest.raises(NonFiniteError, match=r"2 non-finite optimizer steps in a row .* at step 4"):
        train(tmp_path, wrap=wrap, nonfinite="skip", max_consecutive_skips=2, per_device_batch_size=4)
    assert [r["train/skipped_total"] for r in step_rows(tmp_path / "run")] == [0, 0, 1]


# ----------------------------------------------------------------------------- seeds


def test_same_seed_same_losses_different_seed_different(tmp_path):
    def run(name, seed):
        _, summary = train(tmp_path, name, model=build_mlp(dropout=0.3), collate_fn=noisy_collate, seed=seed,
                           per_device_batch_size=4, num_epochs=2)
        return losses(summary.output_dir)

    first = run("a", 1)
    assert run("b", 1) == first
    assert run("c", 2) != first


# ----------------------------------------------------------------------------- resume in-process


def optimizer_moments(path):
    state = ckpt.load_torch(path / "optimizer.pt")
    return state["state"], [g["lr"] for g in state["param_groups"]]


def assert_same_run(a, b):
    """Same per-step losses, final parameters, optimizer moments and learning rate."""
    np.testing.assert_allclose(losses(b.output_dir), losses(a.output_dir), atol=1e-6, rtol=0)
    assert [r["train/lr"] for r in step_rows(b.output_dir)] == [r["train/lr"] for r in step_rows(a.output_dir)]
    assert_params_close(params(b.model), params(a.model))
    (state_a, lr_a), (state_b, lr_b) = optimizer_moments(a.last_checkpoint), optimizer_moments(b.last_checkpoint)
    assert lr_a == lr_b and state_a.keys() == state_b.keys()
    for key in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_b[key][name], state_a[key][name], atol=1e-6, rtol=0)


RESUMABLE = dict(per_device_batch_size=3, grad_accum_steps=2, num_epochs=3, save_every=2)  # 20/6: ragged


def resumable_run(tmp_path, name, **extra):
    return train(tmp_path, name, model=build_mlp(dropout=0.3), collate_fn=noisy_collate,
                 **{**RESUMABLE, **extra})


def test_crash_and_resume_in_process_equals_an_uninterrupted_run(tmp_path):
    reference, _ = resumable_run(tmp_path, "reference")
    with pytest.raises(RuntimeError, match="simulated crash"):
        resumable_run(tmp_path, "resumed", wrap=at_step(7, crash))
    resumed, summary = resumable_run(tmp_path, "resumed")
    assert summary.status == "completed" and summary.step == reference.total_steps == 12
    resume = [r for r in read_metrics(resumed.output_dir / "metrics.jsonl") if r.get("event") == "resume"]
    assert resume == [{"event": "resume", "step": 6, "checkpoint": "checkpoint-6", "epoch": 1, "position": 12}]
    assert_same_run(reference, resumed)


@pytest.mark.parametrize("damage", ["no manifest", "truncated file"])
def test_a_half_written_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    reference, _ = resumable_run(tmp_path, "reference", save_total_limit=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resumable_run(tmp_path, "resumed", wrap=at_step(9, crash), save_total_limit=3)
    newest = resumed_dir = tmp_path / "resumed"
    newest = resumed_dir / "checkpoint-8"
    if damage == "no manifest":
        (newest / "manifest.json").unlink()
    else:
        data = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    resumed, _ = resumable_run(tmp_path, "resumed", save_total_limit=3)
    resume = [r for r in read_metrics(resumed_dir / "metrics.jsonl") if r.get("event") == "resume"]
    assert resume[0]["checkpoint"] == "checkpoint-6"
    assert_same_run(reference, resumed)


def test_resuming_with_a_changed_key_names_it_and_a_safe_change_resumes(tmp_path):
    reference, _ = resumable_run(tmp_path, "reference")
    with pytest.raises(RuntimeError, match="simulated crash"):
        resumable_run(tmp_path, "resumed", wrap=at_step(5, crash))
    with pytest.raises(ConfigError, match=r"train\.lr was 0\.05 in the checkpoint and is 0\.1 now"):
        resumable_run(tmp_path, "resumed", lr=0.1)
    # the out-of-memory fix (same global batch, split in smaller micro-batches) and logging changes resume
    resumed, _ = resumable_run(tmp_path, "resumed", per_device_batch_size=1, grad_accum_steps=6, log_every=3)
    assert_same_run(reference, resumed)


def test_a_finished_run_resumes_to_nothing_and_restores_the_final_model(tmp_path):
    reference, _ = resumable_run(tmp_path, "reference")
    log_before = (reference.output_dir / "metrics.jsonl").read_text()
    again, summary = resumable_run(tmp_path, "reference")
    assert summary.status == "already_complete" and summary.step == 12
    assert (reference.output_dir / "metrics.jsonl").read_text() == log_before
    assert_params_close(params(again.model), params(reference.model), atol=0)


def test_out_of_memory_saves_the_intact_state_and_names_the_setting(tmp_path):
    reference, _ = resumable_run(tmp_path, "reference", save_every=0)

    def oom(_loop):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingOOMError, match=r"out of memory at step 5 \(per_device_batch_size=3.*"
                       r"Saved checkpoint-4.*per_device_batch_size=1 grad_accum_steps=4"):
        resumable_run(tmp_path, "resumed", save_every=0, wrap=at_step(5, oom))
    assert [s for s, _p in ckpt.list_checkpoints(tmp_path / "resumed")] == [4]
    resumed, _ = resumable_run(tmp_path, "resumed", save_every=0, per_device_batch_size=1, grad_accum_steps=6)
    assert_same_run(reference, resumed)


# ----------------------------------------------------------------------------- PPO-style low-level API


class SamplerState:
    """Stage state like PPO's: a KL coefficient and a private sampling generator."""

    def __init__(self):
        self.kl_coef, self.generator = 0.1, torch.Generator().manual_seed(11)

    def state_dict(self):
        return {"kl_coef": self.kl_coef, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.kl_coef = state["kl_coef"]
        self.generator.set_state(state["generator"])


def ppo_like(tmp_path, name, crash_at=None):
    cfg = config(tmp_path, name, per_device_batch_size=4, num_epochs=2, save_every=2, lr=0.01)
    sampler, model = SamplerState(), build_mlp(dropout=0.2)
    history = []
    with TrainLoop(cfg, model, stage_state={"sampler": sampler}) as loop:
        for step in loop.steps(dataset(), collate):
            if step.number == crash_at:
                raise RuntimeError("simulated crash")
            batch = step.batch
            targets = torch.randint(0, CLASSES, batch["y"].shape, generator=sampler.generator)  # "sampling"
            for _epoch in range(2):  # several optimizer steps per step, on minibatches
                for half in (slice(0, 2), slice(2, 4)):
                    logits = loop.model(batch["x"][half])
                    loss = torch.nn.functional.cross_entropy(logits, targets[half]) * (1 + sampler.kl_coef)
                    loop.backward(loss)
                    result = loop.optimizer_step()
                    assert not result.skipped
            sampler.kl_coef *= 1.1  # the controller's update
            history.append(float(loss.detach()))
            loop.finish_step({"ppo/loss": float(loss.detach()), "objective/kl_coef": sampler.kl_coef})
    return loop, sampler, history


def test_low_level_api_resumes_stage_state_and_data_position(tmp_path):
    reference, ref_sampler, _ = ppo_like(tmp_path, "reference")
    assert [r["train/updates"] for r in step_rows(reference.output_dir)] == [4] * 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        ppo_like(tmp_path, "resumed", crash_at=6)
    resumed, sampler, _ = ppo_like(tmp_path, "resumed")
    assert sampler.kl_coef == pytest.approx(ref_sampler.kl_coef)
    assert torch.equal(sampler.generator.get_state(), ref_sampler.generator.get_state())
    assert_params_close(params(resumed.model), params(reference.model))
    ref_rows, rows = step_rows(reference.output_dir), step_rows(resumed.output_dir)
    assert [r["ppo/loss"] for r in rows] == pytest.approx([r["ppo/loss"] for r in ref_rows], abs=1e-6)
    assert [r["objective/kl_coef"] for r in rows] == pytest.approx([r["objective/kl_coef"] for r in ref_rows])


def test_finish_step_is_required(tmp_path):
    with pytest.raises(RuntimeError, match="call loop.finish_step"), \
            TrainLoop(config(tmp_path, per_device_batch_size=4), build_mlp()) as loop:
        for _step in loop.steps(dataset(), collate):
            pass


# ----------------------------------------------------------------------------- logs, eval, settings


def test_metrics_log_eval_and_schedule(tmp_path):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        torch.rand(100)  # evaluation randomness must not shift training
        return {"loss": 1.5, "eval/accuracy": torch.tensor(0.25)}

    cfg = config(tmp_path, "with_eval", per_device_batch_size=4, num_epochs=2, eval_every=4, warmup_steps=2,
                 lr_schedule="cosine")
    loop = TrainLoop(cfg, build_mlp(dropout=0.3), eval_fn=eval_fn)
    loop.fit(dataset(), collate, ce_step)
    _, plain = train(tmp_path, "without_eval", model=build_mlp(dropout=0.3), per_device_batch_size=4,
                     num_epochs=2, warmup_steps=2, lr_schedule="cosine")
    assert losses(loop.output_dir) == losses(plain.output_dir)
    rows = read_metrics(loop.output_dir / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert calls == [False, False, False]  # steps 4, 8 and the last (10), in eval mode
    assert [r["step"] for r in steps if "eval/loss" in r] == [4, 8, 10]
    assert steps[3]["eval/accuracy"] == 0.25
    expected_lr = [0.05 * lr_multiplier(s, "cosine", 2, 10) for s in range(1, 11)]
    assert [r["train/lr"] for r in steps] == pytest.approx(expected_lr)
    assert {"train/loss", "train/grad_norm", "train/epoch", "perf/step_seconds"} <= steps[0].keys()
    assert steps[-1]["train/epoch"] == 2.0 and steps[-1]["train/samples_seen"] == 40
    final = rows[-1]
    assert final["event"] == "run_end" and final["status"] == "completed" and final["memory/peak_rss_mb"] > 10


def test_missing_dashboard_packages_are_a_note_not_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    _, summary = train(tmp_path, per_device_batch_size=10, report_to=["tensorboard", "wandb"])
    assert summary.status == "completed"
    err = capsys.readouterr().err
    assert "tensorboard package is not installed (pip install tensorboard)" in err
    assert "wandb package is not installed (pip install wandb)" in err
    assert len(step_rows(tmp_path / "run")) == 2  # JSON Lines is always on


class FakeSummaryWriter:
    made: list = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars = log_dir, purge_step, []
        FakeSummaryWriter.made.append(self)

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def flush(self):
        pass

    def close(self):
        pass


class FakeWandb:
    def __init__(self):
        self.inits, self.logged = [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(id=kwargs["id"] or "run-abc", log=lambda data, step: self.logged.append(step),
                                     finish=lambda: None)


def test_dashboards_get_every_log_every_step_and_resume_in_place(tmp_path, monkeypatch):
    FakeSummaryWriter.made = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    fake_wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    settings = dict(per_device_batch_size=4, max_steps=5, save_every=2, log_every=2,
                    report_to=["jsonl", "tensorboard", "wandb"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path, wrap=at_step(4, crash), **settings)
    train(tmp_path, **settings)
    first, second = FakeSummaryWriter.made
    assert first.purge_step == 1 and second.purge_step == 3  # events after checkpoint-2 are dropped
    assert sorted({step for _k, _v, step in second.scalars}) == [4, 5]  # every 2nd step, and the last
    assert ("train/loss", step_rows(tmp_path / "run")[3]["train/loss"], 4) in second.scalars
    assert [i["id"] for i in fake_wandb.inits] == [None, "run-abc"]  # the resumed run continues the W&B run
    assert fake_wandb.logged == [2, 4, 5]


def test_settings_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match="gradient_checkpointing=true but Sequential cannot"):
        train(tmp_path, "gc", gradient_checkpointing=True)
    train(tmp_path, "once", per_device_batch_size=10, max_steps=1, save_every=1)
    with pytest.raises(ConfigError, match="already holds checkpoint-1 and resume=false"):
        train(tmp_path, "once", per_device_batch_size=10, max_steps=1, resume=False)
    with TrainLoop(config(tmp_path, "busy"), build_mlp()), pytest.raises(RuntimeError, match="in use by another"):
        train(tmp_path, "busy")
    assert math.isfinite(losses(tmp_path / "once")[0])


# ----------------------------------------------------------------------------- Hugging Face models


@pytest.fixture(scope="module")
def tokenizer():
    from rlhfkit.models.tiny import train_tokenizer

    return train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 5, vocab_size=280)


def token_rows(n=12, length=10):
    g = torch.Generator().manual_seed(4)
    return [{"input_ids": torch.randint(3, 250, (length,), generator=g)} for _ in range(n)]


def lm_collate(rows):
    ids = torch.stack([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids}


def lm_step(model, batch):
    return model(**batch).loss, {}


def tiny_llama(tokenizer, lora=False):
    from rlhfkit.models.tiny import build_tiny_model

    model = build_tiny_model("llama", "micro", tokenizer, seed=0)
    model.config.attention_dropout = 0.2
    if lora:
        import peft

        seed_everything(0)  # LoRA's A matrices are drawn from the global RNG: seed before building
        model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    return model


def test_lora_model_checkpoints_an_adapter_folder_and_resumes_exactly(tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    settings = dict(data=token_rows(), collate_fn=lm_collate, step=lm_step, per_device_batch_size=3,
                    save_every=2, lr=0.01)
    reference, _ = train(tmp_path, "reference", model=tiny_llama(tokenizer, lora=True), **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path, "resumed", model=tiny_llama(tokenizer, lora=True), wrap=at_step(4, crash), **settings)
    resumed, _ = train(tmp_path, "resumed", model=tiny_llama(tokenizer, lora=True), **settings)
    assert_same_run(reference, resumed)
    folder = resumed.last_checkpoint / "model"
    assert (folder / "adapter_config.json").exists()
    loaded = peft.PeftModel.from_pretrained(tiny_llama(tokenizer), folder)  # plain peft loads the folder
    trained = dict(resumed.model.named_parameters())
    for name, param in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, trained[name]), name


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, tokenizer):
    settings = dict(data=token_rows(), collate_fn=lm_collate, step=lm_step, per_device_batch_size=4,
                    max_steps=3)
    plain, _ = train(tmp_path, "plain", model=tiny_llama(tokenizer), **settings)
    recomputed, _ = train(tmp_path, "recomputed", model=tiny_llama(tokenizer), gradient_checkpointing=True,
                          **settings)
    assert recomputed.unwrapped_model.is_activation_checkpointing
    assert not plain.unwrapped_model.is_activation_checkpointing
    np.testing.assert_allclose(losses(recomputed.output_dir), losses(plain.output_dir), atol=1e-6)
    assert_params_close(params(recomputed.model), params(plain.model), atol=1e-6)
    # the final export is a folder plain transformers loads
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(plain.save_model(tmp_path / "final"))
    assert_params_close(params(exported), params(plain.model), atol=0)


def test_request_stop_ends_the_run_checkpointed_and_a_rerun_finds_it_complete(tmp_path):
    def stop_at_three(loop, step_fn):
        def wrapped(model, batch):
            if loop._current is not None and loop._current.number == 3:
                loop.request_stop("the judge fell")
            return step_fn(model, batch)
        return wrapped

    loop, summary = train(tmp_path, wrap=stop_at_three, max_steps=8, per_device_batch_size=4, save_every=5)
    assert summary.status == "completed" and loop.step == 3
    out = tmp_path / "run"
    assert (out / "checkpoint-3").exists() and not (out / "checkpoint-5").exists()
    stops = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "stop"]
    assert stops and stops[0]["reason"] == "the judge fell" and stops[0]["planned_steps"] == 8
    weights = params(loop.unwrapped_model)
    again, summary2 = train(tmp_path, max_steps=8, per_device_batch_size=4, save_every=5)
    assert summary2.status == "already_complete" and again.step == 3  # never trains past the stop
    assert all(torch.equal(a, b) for a, b in zip(weights, params(again.unwrapped_model)))
