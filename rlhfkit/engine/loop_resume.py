"""What makes a :class:`rlhfkit.engine.loop.TrainLoop` run resumable: the setup that ends in resume-or-start,
loading and writing checkpoints, and the save of an intact state when a step runs out of memory.

:class:`ResumableRun` is a base class of ``TrainLoop``, not used alone: it reads the loop's collaborators and
counters (``config``, ``model``, ``accelerator``, ``metrics``, ``stage_state``, ``step``, ``epoch``, …) and sets
the ones the steps need (the data order, optimizer, scheduler, trainable parameters). Everything a resumed run
needs is written by :meth:`ResumableRun._save_checkpoint` and read back by :meth:`ResumableRun._load_checkpoint`,
so the two sides of the checkpoint format sit together here.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.order import DataOrder, derive_seed
from rlhfkit.engine import checkpoint as ckpt
from rlhfkit.engine import fsdp
from rlhfkit.engine.determinism import capture_rng_state, seed_everything
from rlhfkit.engine.loop_support import (
    build_optimizer,
    build_scheduler,
    config_record,
    default_param_groups,
    enable_activation_checkpointing,
    oom_message,
    resume_problem,
)
from rlhfkit.engine.loop_types import NonFiniteError
from rlhfkit.engine.metrics_log import read_metrics, say
from rlhfkit.engine.training_checkpoint import load_training_checkpoint, save_training_checkpoint

__all__ = ["ResumableRun"]


class ResumableRun:
    """Setup and resume (``_setup`` … ``_load_checkpoint``), checkpoints (``_save_checkpoint``,
    ``retire_checkpoints``) and the out-of-memory save (``_on_out_of_memory``) of the training loop."""

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

    # ------------------------------------------------------------------ out of memory

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
