"""The training loop every stage shares: optimizer, schedule, data order, checkpoints, logs, guards.

Two ways to use it (``docs/training-loop.md`` has the full story):

* **Supervised stages** (SFT, reward, DPO) give a ``step_fn(model, micro_batch) -> (loss, metrics)``
  returning the *mean* loss of the micro-batch; :meth:`TrainLoop.fit` does the rest — accumulation with
  exact weights, clipping, the non-finite guard, the scheduler, evaluation, logs and checkpoints::

      summary = TrainLoop(cfg.train, model, run_config=cfg, eval_fn=evaluate).fit(dataset, collate, step_fn)

* **PPO** (or anything whose step is not one forward/backward) drives the step itself::

      with TrainLoop(cfg.train, model, run_config=cfg, stage_state={"kl_controller": kl_ctl}) as loop:
          for step in loop.steps(prompts, collate):          # data order, resume position: the loop's
              ...generate, score, advantages...
              for minibatch in ...:                          # several PPO epochs of minibatches
                  loop.backward(ppo_loss(...))
                  loop.optimizer_step()                      # clipped, guarded against nan/inf
              loop.finish_step(metrics)                      # scheduler, log line, eval, checkpoint

A *step* is one global batch from the data (an optimizer step for ``fit``, a rollout iteration for PPO).
Everything that a resumed run needs — model, optimizer, scheduler, every RNG, the data position, the
counters, the stage's ``state_dict()`` objects — is in each checkpoint, and re-running the same command
resumes from the latest complete one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.order import DataOrder, derive_seed, shard_step
from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine import fsdp
from rlhfkit.engine.determinism import capture_rng_state, restore_rng_state, seed_everything
from rlhfkit.engine.loop_support import (
    OutputDirLock,
    build_optimizer,
    build_scheduler,
    config_record,
    default_param_groups,
    enable_activation_checkpointing,
    is_out_of_memory,
    make_accelerator,
    nonfinite_message,
    oom_message,
    peak_memory_mb,
    preserved_rng,
    resume_problem,
)
from rlhfkit.engine.metrics_log import MetricsLog, Progress, plain_number, read_metrics, say
from rlhfkit.engine.run_doctor import check_loss
from rlhfkit.engine.runtime import resolve_run_precision
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.engine.training_checkpoint import load_training_checkpoint, save_training_checkpoint
from rlhfkit.errors import RunStopped


class NonFiniteError(RunStopped):
    """A non-finite loss or gradient norm stopped the run (no optimizer step, no checkpoint after it)."""


class TrainingOOMError(RunStopped):
    """The run ran out of memory; the message says which setting to lower and what was saved."""


@dataclass
class Step:
    """One step handed to the stage: this process's share of one global batch."""

    number: int  # 1-based number of this step
    total: int  # steps in the whole run
    epoch: int  # 0-based epoch the examples come from
    indices: list[list[int]]  # dataset indices of each micro-batch of this process
    micro_batches: list[Any]  # the collated micro-batches, same order (grad_accum_steps of them, fewer at an epoch's end)
    num_examples: int  # examples of the global batch over all processes (before any padding)

    @property
    def batch(self) -> Any:
        """The only micro-batch (stages that do not accumulate, e.g. PPO with grad_accum_steps=1)."""
        if len(self.micro_batches) != 1:
            raise ValueError(f"step {self.number} has {len(self.micro_batches)} micro-batches; use micro_batches")
        return self.micro_batches[0]


@dataclass
class UpdateResult:
    grad_norm: float  # global L2 norm of the gradients before clipping
    skipped: bool  # True when the guard skipped this optimizer step
    lr: float  # learning rate of the step


@dataclass
class RunSummary:
    status: str  # "completed", "already_complete" or "error"
    step: int  # steps completed
    total_steps: int
    output_dir: Path
    checkpoint: Path | None  # the latest complete checkpoint
    last_metrics: dict[str, Any] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)


class TrainLoop:
    """The shared loop. ``__init__`` only stores its collaborators; work starts in :meth:`steps`/:meth:`fit`.

    ``run_config``: the stage's whole config (saved in checkpoints, compared on resume; keys in
    ``safe_to_change`` — dotted, e.g. ``"eval.num_prompts"`` — may differ). ``stage_state``: objects with
    ``state_dict()``/``load_state_dict()`` saved per process in every checkpoint (their state must be
    tensors, numbers, strings, lists and dicts). ``eval_fn(model) -> metrics`` runs in eval mode under
    ``torch.no_grad`` without disturbing the training RNG. ``param_groups`` replaces the default AdamW
    groups (matrices decayed, biases and norms not). ``reports``: JSON files (name → data, e.g. the stage's
    ``data_report.json``) written into ``output_dir`` once the run is known to start or resume — after the
    resume check, so a refused run leaves the previous run's files as they were. ``fsdp_units``: submodules
    the stage runs on their own (PPO samples with the policy alone), each an FSDP2 unit of its own under
    FSDP2, so that calling it gathers its weights (``engine/fsdp.py``).
    """

    def __init__(self, config: TrainConfig, model: torch.nn.Module, *, run_config: Any = None,
                 stage_state: dict[str, Any] | None = None, eval_fn: Callable[[Any], dict] | None = None,
                 tokenizer: Any = None, param_groups: list[dict] | None = None,
                 safe_to_change: tuple[str, ...] = (), reports: dict[str, Any] | None = None,
                 fsdp_units: tuple[torch.nn.Module, ...] = ()) -> None:
        self.config = config
        self.model = model
        self.run_config = run_config
        self.stage_state = dict(stage_state or {})
        self.eval_fn = eval_fn
        self.tokenizer = tokenizer
        self.param_groups = param_groups
        self.safe_to_change = tuple(safe_to_change)
        self.reports = dict(reports or {})
        self.fsdp_units = tuple(fsdp_units)
        self.output_dir = Path(config.output_dir)
        self.step = 0  # completed steps
        self.epoch = 0  # epoch of the next step
        self.position = 0  # index in the epoch's permutation where the next step starts
        self.samples_seen = 0
        self.skipped_total = 0
        self.consecutive_skips = 0
        self.total_steps = 0
        self.last_checkpoint: Path | None = None
        self.summary: RunSummary | None = None
        self._accelerator = None
        self._entered = self._started = False
        self._status = "error"
        self._current: Step | None = None
        self._save_pending = False
        self._last_row: dict[str, Any] = {}
        self._clock = time.perf_counter()
        self._elapsed_before = 0.0
        self._restore_rng: dict | None = None
        self._wandb_run_id: str | None = None
        self._stop_reason: str | None = None
        self._losses: list[dict[str, Any]] = []  # {"step", "train/loss"} of every step, for the run doctor
        self._doctor_warned_at = -(10**9)
        self.metrics: MetricsLog | None = None

    # ------------------------------------------------------------------ handles for the stage

    @property
    def accelerator(self):
        if self._accelerator is None:
            if self.config.mixed_precision == "auto":  # resolved once and recorded: checkpoints keep it
                self.config.mixed_precision = resolve_run_precision(self.output_dir)
            self._accelerator = make_accelerator(self.config.mixed_precision)
        return self._accelerator

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without DDP wrappers (for ``generate``). Under FSDP2 the sharded model itself: its
        forward and ``generate`` work on every process together; to save it, use :meth:`final_model`."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded with FSDP2 (``engine/fsdp.py``)."""
        return fsdp.is_sharded(self.model)

    def final_model(self) -> torch.nn.Module:
        """The trained model as a plain module on every process, to evaluate and save after training: the
        unwrapped model, or under FSDP2 its weights gathered into a CPU copy (a collective: every process
        must call it; each holds the whole model in host memory once)."""
        if not self.sharded:
            return self.unwrapped_model
        return fsdp.gathered_model(self.model, self._skeleton)

    def save_model(self, folder: str | Path) -> Path:
        """Save the trained model (unwrapped; the adapter folder for PEFT) and the tokenizer as a standard
        Hugging Face folder, atomically, from the main process. A stage that merges LoRA first calls
        ``checkpoint.save_folder_atomically`` itself."""
        folder = Path(folder)
        model = self.final_model()
        if self.is_main_process:
            ckpt.save_folder_atomically(folder, lambda tmp: ckpt.save_model(
                model, tmp, self.tokenizer, for_resume=False))
        self.accelerator.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------ session

    def __enter__(self) -> TrainLoop:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = OutputDirLock(self.output_dir, enabled=self.is_main_process)
        self._lock.acquire()
        self.metrics = MetricsLog(self.output_dir, self.config.report_to, enabled=self.is_main_process,
                                  run_name=self.config.run_name or self.output_dir.name,
                                  wandb_project=self.config.wandb_project)
        self._progress: Progress | None = None
        self._entered = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        replacement = None
        try:
            if self._progress is not None:
                self._progress.close()
            if exc is not None and is_out_of_memory(exc):
                replacement = TrainingOOMError(self._on_out_of_memory())
            if exc is not None:
                self._status = "error"
            self._finish_run(exc if replacement is None else replacement)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self._lock.release()
            self._entered = False
        if replacement is not None:
            raise replacement from exc
        return False

    def fit(self, dataset: Any, collate_fn: Callable | None, step_fn: Callable[[Any, Any], tuple],
            *, weight_fn: Callable[[Any], float] | None = None) -> RunSummary:
        """Train ``model`` on ``dataset`` to the end (or resume it there); return the run summary.

        ``step_fn(model, micro_batch) -> (loss, metrics)``: ``loss`` is the micro-batch's *mean* over the
        units counted by ``weight_fn(micro_batch)`` (default: its number of examples; return its token
        count for a token-mean loss). Each micro-batch is weighted by its share of the step's units over
        all processes, so accumulation and a ragged last batch give exactly the mean over the global batch.
        ``metrics`` (numbers or 0-d tensors) are averaged with the same weights and logged under their
        names (``train/`` is prefixed to names without a ``/``).
        """
        with self:
            for step in self.steps(dataset, collate_fn):
                self.finish_step(self._fit_step(step, step_fn, weight_fn))
        assert self.summary is not None
        return self.summary

    def _fit_step(self, step: Step, step_fn: Callable, weight_fn: Callable | None) -> dict[str, float]:
        weights = [float(weight_fn(b)) if weight_fn else float(len(ix))
                   for b, ix in zip(step.micro_batches, step.indices)]
        total = self._sum_over_processes([sum(weights)])[0]
        if not total > 0:
            raise ValueError(f"step {step.number}: the micro-batches' weights sum to {total}; "
                             "weight_fn must count the units (examples or tokens) the loss averages over")
        sums: dict[str, float] = {"train/loss": 0.0}
        last = len(step.micro_batches) - 1
        for i, (batch, weight) in enumerate(zip(step.micro_batches, weights)):
            with self.no_sync(i < last):
                loss, metrics = step_fn(self.model, batch)
                self.backward(loss, scale=weight * self.num_processes / total)
            sums["train/loss"] += weight * float(loss.detach())
            for name, value in (metrics or {}).items():
                key = _metric_name(name, "train")
                sums[key] = sums.get(key, 0.0) + weight * float(plain_number(value))
        self.optimizer_step()
        reduced = self._sum_over_processes(list(sums.values()))
        return {key: value / total for key, value in zip(sums, reduced)}

    # ------------------------------------------------------------------ the low-level API

    def steps(self, dataset: Any, collate_fn: Callable | None = None) -> Iterator[Step]:
        """Yield the run's remaining steps (after resuming); call :meth:`finish_step` at the end of each."""
        if not self._entered:
            raise RuntimeError("use `with loop:` around `for step in loop.steps(...)`")
        if self._started:
            raise RuntimeError("steps() can run once per TrainLoop")
        self._started = True
        self._setup(len(dataset))
        if self._stop_reason is not None:  # an earlier run stopped early on purpose: that was its end
            self.total_steps = self.step
        if self.step >= self.total_steps:
            self._status = "already_complete"
            say(f"{self.output_dir}: the run is already complete ({self.step}/{self.total_steps} steps); "
                "nothing to train")
            return
        self._progress = Progress(self.total_steps, self.step, self.config.log_every,
                                  bar=self.config.progress_bar, enabled=self.is_main_process,
                                  name=self.config.run_name or self.output_dir.name)
        if self._restore_rng is not None:  # last thing before the first step: nothing may consume RNG after
            restore_rng_state(self._restore_rng)
        else:
            seed_everything(self.config.seed, self.accelerator.process_index)
        rank, per_device = self.accelerator.process_index, self.config.per_device_batch_size
        while self.step < self.total_steps:
            snapshot = self._snapshot()  # before collate: a collate_fn may draw random numbers
            indices = self._order.step_indices(self.epoch, self.position)
            shards = shard_step(indices, self.num_processes, rank, per_device)
            batches = [[dataset[i] for i in shard] for shard in shards]
            if collate_fn is not None:
                batches = [collate_fn(examples) for examples in batches]
            self._begin_step(Step(self.step + 1, self.total_steps, self.epoch, shards, batches, len(indices)),
                             snapshot)
            yield self._current
            if self._current is not None:
                raise RuntimeError(f"step {self.step + 1}: call loop.finish_step() before the next step")
        self._status = "completed"

    @contextlib.contextmanager
    def no_sync(self, enabled: bool = True):
        """Skip the gradient all-reduce for micro-batches before the last one (wrap forward and backward)."""
        if enabled and self.num_processes > 1 and self.sharded:
            self.model.set_requires_gradient_sync(False)  # FSDP2 keeps the unreduced gradients until the last
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        elif enabled and self.num_processes > 1:
            with self.accelerator.no_sync(self.model):
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor, *, scale: float = 1.0) -> None:
        """Accumulate the gradients of ``loss × scale``; a non-finite loss is remembered for the guard."""
        if self._current is None:
            raise RuntimeError("backward() outside a step")
        if self._nonfinite_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._nonfinite_loss = float(loss.detach().float().sum())
        self.accelerator.backward(loss * scale if scale != 1.0 else loss)

    def optimizer_step(self) -> UpdateResult:
        """Clip and take one AdamW step — unless the loss or gradient norm is non-finite on any process:
        then no step is taken, the gradients are zeroed, and ``nonfinite`` decides (stop, or skip and count).
        """
        if self._current is None:
            raise RuntimeError("optimizer_step() outside a step")
        max_norm = self.config.max_grad_norm or math.inf
        if self.sharded:
            grad_norm = fsdp.clip_grad_norm_(self._trainable, max_norm)
        else:
            grad_norm = float(self.accelerator.clip_grad_norm_(self._trainable, max_norm))
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss_value, self._nonfinite_loss = self._nonfinite_loss, None
        bad = loss_value is not None or not math.isfinite(grad_norm)
        if self.num_processes > 1:  # every process must take the same decision
            bad = self._sum_over_processes([float(bad)])[0] > 0
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if loss_value is not None:
                self._on_nonfinite("loss", loss_value)
            else:
                self._on_nonfinite("gradient norm", grad_norm)
            return UpdateResult(grad_norm, True, lr)
        self._updates_in_step += 1  # from here on, an out-of-memory error leaves no intact state to save
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips = 0
        self._grad_norm = grad_norm
        return UpdateResult(grad_norm, False, lr)

    def stop_nonfinite(self, what: str) -> None:
        """Stop the run on non-finite values met outside a loss (e.g. a rollout sampled from diverged weights):
        a :class:`NonFiniteError` naming the step and the latest checkpoint; no update is made from them."""
        step = self._current
        number = step.number if step is not None else self.step + 1
        last = self.last_checkpoint.name if self.last_checkpoint else "none yet"
        self.metrics.event("nonfinite", number, kind="values", action="stop")
        raise NonFiniteError(
            f"non-finite values at step {number} ({what}): no update was made from them and no checkpoint "
            f"written after them (latest checkpoint: {last}). The weights have likely diverged: lower lr "
            f"(now {self.config.lr:g}) or max_grad_norm, or use mixed_precision=no.")

    def log(self, metrics: dict[str, Any]) -> None:
        """Add metrics to the current step's log line (names without ``/`` get ``train/``)."""
        self._pending.update({_metric_name(k, "train"): plain_number(v) for k, v in metrics.items()})

    def request_stop(self, reason: str) -> None:
        """End the run after the current step as if it were the last: evaluated, checkpointed, final.

        The stop is recorded in the checkpoint, so running the same command again finds the run complete
        instead of training past the stop (e.g. the reward-hacking monitor's confirmed divergence).
        Every process must call it on the same step (broadcast the decision first when ranks differ).
        """
        if self._current is None:
            raise RuntimeError("request_stop() outside a step")
        self._stop_reason = reason

    def finish_step(self, metrics: dict[str, Any] | None = None) -> None:
        """End the step: scheduler, data position, log line, evaluation and checkpoint when due."""
        step = self._current
        if step is None:
            raise RuntimeError("finish_step() outside a step")
        self.log(metrics or {})
        self.scheduler.step()
        self.epoch, self.position = self._order.advance(self.epoch, self.position, step.num_examples)
        self.samples_seen += step.num_examples
        self.step += 1
        self._current = None
        row = {**self._pending, **self._loop_metrics(step)}
        if self._stop_reason is not None and self.step < self.total_steps:
            self.metrics.event("stop", self.step, reason=self._stop_reason, planned_steps=self.total_steps)
            say(f"stopping after step {self.step} of {self.total_steps}: {self._stop_reason}")
            self.total_steps = self.step
        is_last = self.step == self.total_steps
        every = self.config.eval_every
        if self.eval_fn is not None and (is_last or (every and self.step % every == 0)):
            row.update(self._evaluate())
        self._last_row = row
        self.metrics.log(self.step, row, to_dashboards=self.step % self.config.log_every == 0 or is_last)
        self._check_loss(row)
        self._progress.update(self.step, row)
        every = self.config.save_every
        if is_last or self._save_pending or (every and self.step % every == 0):
            if self._skips_in_step and not is_last:
                self._save_pending = True  # never checkpoint right after a non-finite step; the next one will
            else:
                self._save_checkpoint()

    # ------------------------------------------------------------------ setup and resume

    def _setup(self, num_examples: int) -> None:
        cfg, acc = self.config, self.accelerator
        global_batch = cfg.per_device_batch_size * cfg.grad_accum_steps * acc.num_processes
        self._order = DataOrder(num_examples, global_batch, cfg.seed, cfg.shuffle, cfg.drop_last)
        self.total_steps = cfg.max_steps or cfg.num_epochs * self._order.steps_per_epoch
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * self.total_steps)
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        self.model.train()
        if fsdp.requested():  # before the optimizer is built: it holds the sharded parameters
            self._shard_model()
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self._trainable:
            raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
        optimizer = build_optimizer(self.param_groups or default_param_groups(self._trainable), cfg)
        self.scheduler = build_scheduler(optimizer, cfg.lr_schedule, warmup, self.total_steps)
        if self.sharded:  # accelerate gets no model to wrap (on CPU it would make it DDP: see engine/fsdp.py)
            self.optimizer = optimizer
        else:
            self.model, self.optimizer = acc.prepare(self.model, optimizer)
        self._resume_or_start()

    def _shard_model(self) -> None:
        # fully_shard replaces every parameter by a sharded one: the stage's optimizer groups are found again
        # by parameter name
        names = {id(p): n for n, p in self.model.named_parameters()}
        group_names = [[names[id(p)] for p in g["params"]] for g in self.param_groups or []]
        self._skeleton = fsdp.meta_skeleton(self.model)
        fsdp.shard(self.model, self.device, self.num_processes, units=self.fsdp_units)
        if self.param_groups is not None:
            params = dict(self.model.named_parameters())
            self.param_groups = [{**g, "params": [params[n] for n in ns]}
                                 for g, ns in zip(self.param_groups, group_names)]
        if self.config.mixed_precision == "bf16":  # what accelerate.prepare does to a model it wraps
            self.model.forward = self.accelerator.autocast()(self.model.forward)

    def _resume_or_start(self) -> None:
        latest, skipped = ckpt.find_latest_checkpoint(self.output_dir, verify_content=True)
        if self.is_main_process:
            ckpt.remove_stale_temporaries(self.output_dir)
            instead = f"falling back to {latest.name}" if latest is not None else "no earlier checkpoint; starting afresh"
            for path, reason in skipped:
                state = "damaged" if ckpt.DAMAGED in reason else "incomplete"
                say(f"skipped {path.name}: {state}, {reason}; {instead}")
        self.accelerator.wait_for_everyone()
        existing = ckpt.list_checkpoints(self.output_dir)
        if existing and not self.config.resume:
            raise ConfigError(f"output_dir {self.output_dir} already holds {existing[-1][1].name} and "
                              "resume=false; choose a new output_dir or delete the old checkpoints")
        resume_step = 0
        if latest is not None:
            self._load_checkpoint(latest)
            resume_step = self.step
        if self.is_main_process:
            for name, data in self.reports.items():
                ckpt.write_json_atomically(self.output_dir / name, data)
        self.metrics.open(resume_step, config_record(self.config, self.run_config, {}),
                          wandb_run_id=self._wandb_run_id if latest else None)
        if resume_step and self.is_main_process and self.metrics.path.exists():  # the doctor sees the whole run
            self._losses = [{"step": r["step"], "train/loss": r["train/loss"]}
                            for r in read_metrics(self.metrics.path) if "train/loss" in r and "event" not in r]
        for note in self.metrics.notes:
            say(note)
        if latest is not None and self.step < self.total_steps:
            self.metrics.event("resume", self.step, checkpoint=latest.name, epoch=self.epoch,
                               position=self.position)
            say(f"resuming from {latest} (step {self.step}/{self.total_steps}, epoch {self.epoch}, "
                f"example {self.position} of {self._order.num_examples} in the epoch)")

    def _load_checkpoint(self, path: Path) -> None:
        problem = resume_problem(ckpt.read_json(path / "config.json"), self._data_record(), self.config,
                                 self.run_config, self.safe_to_change)
        if problem:
            raise ConfigError(f"cannot resume from {path}: {problem}")
        saved_state = ckpt.read_json(path / "trainer_state.json")
        if (not ckpt.has_optimizer_state(path) and saved_state["step"] < self.total_steps
                and not saved_state.get("stopped")):
            raise ConfigError(
                f"cannot train past step {saved_state['step']}: the run ended there and {path.name} keeps no "
                "optimizer state (train.keep_checkpoints_at_end=false); start a new output_dir from its final "
                "model, or keep the checkpoints next time")
        if self.sharded and saved_state.get("model_format") != "dcp":
            raise ConfigError(f"cannot resume from {path} under FSDP2: it was written without FSDP2 "
                              f"({saved_state.get('model_format')} format, one optimizer state, not shards); "
                              "resume it with the launch that wrote it (one process, ddp.yaml or cpu_2proc.yaml); a run "
                              "started under FSDP2, even as one process, may change its process count")
        rank = self.accelerator.process_index
        state, rng, stage = load_training_checkpoint(path, rank, model=self.unwrapped_model,
                                                          optimizer=self.optimizer, scheduler=self.scheduler)
        for name, obj in self.stage_state.items():
            if stage is None or name not in stage:
                raise ckpt.CheckpointError(f"{path} holds no state for {name!r}; resume with the same stage")
            obj.load_state_dict(stage[name])
        if rng is None:  # more processes than when saved: a fresh, documented stream for the new rank
            seed_everything(derive_seed(self.config.seed, "resume", state["step"]), rank)
            rng = capture_rng_state()
        self._restore_rng = rng  # restored just before the first step, after everything else
        for key in ("step", "epoch", "position", "samples_seen", "skipped_total", "consecutive_skips"):
            setattr(self, key, state[key])
        self._elapsed_before = state.get("elapsed_seconds", 0.0)
        self._wandb_run_id = state.get("wandb_run_id")
        self._stop_reason = state.get("stopped")
        self.last_checkpoint = path

    def _data_record(self) -> dict[str, int]:
        return {"num_examples": self._order.num_examples, "global_batch_size": self._order.global_batch_size,
                "num_processes": self.num_processes}

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, snapshot: dict | None = None) -> Path:
        """Write ``checkpoint-{step}``; ``snapshot`` replaces the RNG and stage state (out-of-memory save)."""
        for p in self._trainable:  # belt and braces: never persist a corrupted model
            if not bool(torch.isfinite(fsdp.local(p.detach())).all()):
                raise NonFiniteError(f"step {self.step}: a parameter is non-finite; not writing a checkpoint")
        stage = snapshot["stage"] if snapshot else {k: o.state_dict() for k, o in self.stage_state.items()}
        self.metrics.sync()  # the log is durable up to the checkpoint
        final = save_training_checkpoint(
            self.accelerator, self.output_dir, self.step, model=self.unwrapped_model,
            optimizer=self.optimizer, scheduler=self.scheduler, tokenizer=self.tokenizer,
            trainer_state=self._trainer_state(), config=config_record(self.config, self.run_config,
                                                                      self._data_record()),
            rng=snapshot["rng"] if snapshot else capture_rng_state(), stage=stage or None,
            keep=self.config.save_total_limit, sharded=self.sharded)
        self.last_checkpoint, self._save_pending = final, False
        return final

    def retire_checkpoints(self) -> None:
        """Call once the stage's final folder is complete: unless ``train.keep_checkpoints_at_end``, delete
        the older checkpoints and the last one's optimizer state (see ``checkpoint.retire_checkpoints``)."""
        if self.is_main_process and not self.config.keep_checkpoints_at_end:
            ckpt.retire_checkpoints(self.output_dir)
        self.accelerator.wait_for_everyone()

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position,
                "samples_seen": self.samples_seen, "skipped_total": self.skipped_total,
                "consecutive_skips": self.consecutive_skips, "total_steps": self.total_steps,
                "wandb_run_id": self.metrics.wandb_run_id, "stopped": self._stop_reason,
                "elapsed_seconds": self._elapsed(), **self._data_record()}

    # ------------------------------------------------------------------ per step

    def _snapshot(self) -> dict[str, Any]:
        # The state at the start of a step, so that an out-of-memory error inside it can still be saved.
        stage = {k: copy.deepcopy(o.state_dict()) for k, o in self.stage_state.items()}
        return {"rng": capture_rng_state(), "stage": stage}

    def _begin_step(self, step: Step, snapshot: dict[str, Any]) -> None:
        self._current, self._step_snapshot = step, snapshot
        self._updates_in_step = self._skips_in_step = 0
        self._nonfinite_loss = None
        self._grad_norm = math.nan
        self._pending: dict[str, Any] = {}
        self._step_lr = float(self.optimizer.param_groups[0]["lr"])
        self._step_clock = time.perf_counter()

    def _loop_metrics(self, step: Step) -> dict[str, Any]:
        seconds = time.perf_counter() - self._step_clock
        return {
            "train/lr": self._step_lr,
            "train/grad_norm": self._grad_norm,
            "train/epoch": self.epoch + self.position / self._order.num_examples,
            "train/updates": self._updates_in_step,
            "train/skipped_updates": self._skips_in_step,
            "train/skipped_total": self.skipped_total,
            "train/samples_seen": self.samples_seen,
            "perf/step_seconds": seconds,
            "perf/samples_per_second": step.num_examples / seconds if seconds > 0 else math.nan,
            **peak_memory_mb(),
        }

    def _on_nonfinite(self, kind: str, value: float) -> None:
        step = self._current
        where = f"step {step.number} (epoch {step.epoch}, dataset indices {_preview(step.indices)})"
        last = self.last_checkpoint.name if self.last_checkpoint else "none yet"
        if self.config.nonfinite == "skip":
            self.skipped_total += 1
            self._skips_in_step += 1
            self.consecutive_skips += 1
            say(f"non-finite {kind} ({value}) at {where}: optimizer step skipped "
                f"({self.consecutive_skips} in a row, {self.skipped_total} in total)")
        if self.config.nonfinite == "stop" or self.consecutive_skips >= self.config.max_consecutive_skips:
            self.metrics.event("nonfinite", step.number, kind=kind, action="stop")
            raise NonFiniteError(nonfinite_message(self.config, kind, value, where, last,
                                                   self.consecutive_skips))

    def _check_loss(self, row: dict[str, Any]) -> None:
        # The run doctor's divergence check (run_doctor.check_loss): said at most once per 20 steps, and kept
        # as a `doctor` event, so a run that diverged without going NaN does not end silently.
        if "train/loss" not in row:
            return
        self._losses.append({"step": self.step, "train/loss": row["train/loss"]})
        for warning in check_loss(self._losses):
            if self.is_main_process and self.step - self._doctor_warned_at >= 20:
                self._doctor_warned_at = self.step
                say(f"run doctor: {warning}")
                self.metrics.event("doctor", self.step, kind=warning.kind, message=warning.message,
                                   fix=warning.fix)

    def _evaluate(self) -> dict[str, Any]:
        model = self.model
        with preserved_rng():  # evaluation never shifts the training randomness
            model.eval()
            try:
                with torch.no_grad():
                    metrics = self.eval_fn(model) or {}
            finally:
                model.train()
        return {_metric_name(k, "eval"): plain_number(v) for k, v in metrics.items()}

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        if self.num_processes == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    # ------------------------------------------------------------------ progress, end of run

    def _on_out_of_memory(self) -> str:
        """Save the state of the step's start when it is intact; return the message for the user."""
        saved = None
        intact = (self._started and self._current is not None and self._updates_in_step == 0
                  and self.step > 0 and (self.last_checkpoint is None
                                         or self.last_checkpoint.name != f"{ckpt.PREFIX}{self.step}"))
        if intact:
            self.optimizer.zero_grad(set_to_none=True)
            with contextlib.suppress(Exception):  # saving needs memory too; the old checkpoint stays
                saved = self._save_checkpoint(snapshot=self._step_snapshot)
        failing = self._current.number if self._current is not None else self.step
        return oom_message(self.config, failing, saved, self.last_checkpoint)

    def _finish_run(self, exc: BaseException | None) -> None:
        memory = peak_memory_mb()
        fields = {"status": self._status, "total_steps": self.total_steps, **memory,
                  "time/total_seconds": self._elapsed()}
        if exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}"
        if self.metrics is not None and self.metrics._file is not None and self._status != "already_complete":
            self.metrics.event("run_end", self.step, **fields)
        self.summary = RunSummary(self._status, self.step, self.total_steps, self.output_dir,
                                  self.last_checkpoint, self._last_row, memory)
        if self.is_main_process and self._status == "completed":
            peak = ", ".join(f"{k.split('/')[-1]} {v:.0f} MB" for k, v in memory.items())
            say(f"finished {self.step} steps in {self._elapsed():.1f} s; peak memory: {peak}")

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._clock


def _metric_name(name: str, default_section: str) -> str:
    return name if "/" in name else f"{default_section}/{name}"


def _preview(shards: list[list[int]], limit: int = 8) -> str:
    indices = [i for shard in shards for i in shard]
    shown = ", ".join(map(str, indices[:limit]))
    return f"[{shown}{', …' if len(indices) > limit else ''}]"
