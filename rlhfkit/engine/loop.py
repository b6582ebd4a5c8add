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

This module holds :class:`TrainLoop` itself: the session, ``fit``, ``steps``/``finish_step``, the per-step log
line, evaluation and the end of the run. Its pieces: ``loop_update.py`` (``backward``, ``optimizer_step`` and
the non-finite guard), ``loop_resume.py`` (setup, resume, checkpoints, the out-of-memory save),
``loop_types.py`` (``Step``, ``RunSummary``, the errors; re-exported here), ``loop_support.py`` (pure helpers).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.order import shard_step
from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine import fsdp
from rlhfkit.engine.determinism import capture_rng_state, restore_rng_state, seed_everything
from rlhfkit.engine.loop_resume import ResumableRun
from rlhfkit.engine.loop_support import (
    OutputDirLock,
    is_out_of_memory,
    make_accelerator,
    peak_memory_mb,
    preserved_rng,
)

# The loop's records and errors live in loop_types.py (its pieces import them without importing the loop);
# re-exported here, where docs/training-loop.md documents them and the stages import them from.
from rlhfkit.engine.loop_types import NonFiniteError, RunSummary, Step, TrainingOOMError, UpdateResult
from rlhfkit.engine.loop_update import GuardedUpdates
from rlhfkit.engine.metrics_log import MetricsLog, Progress, plain_number, say
from rlhfkit.engine.run_doctor import check_loss
from rlhfkit.engine.runtime import resolve_run_precision
from rlhfkit.engine.train_config import TrainConfig

__all__ = ["NonFiniteError", "RunSummary", "Step", "TrainLoop", "TrainingOOMError", "UpdateResult"]


class TrainLoop(GuardedUpdates, ResumableRun):
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

    # ------------------------------------------------------------------ end of run

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
