"""Where training metrics go: JSON Lines always, TensorBoard and Weights & Biases on request.

``metrics.jsonl`` in the output folder holds one JSON object per step, ``{"step": 12, "train/loss": …}``,
with hierarchical metric names (``train/…``, ``eval/…``, ``memory/…``, the stage's own ``sft/…``), and a
few event lines marked by an ``"event"`` key (``resume``, ``run_end``). Non-finite numbers are written as
``null`` (JSON has no NaN) and the step line says which value was non-finite. On resume the lines of
steps after the checkpoint (written by the run that crashed) are dropped, so the file always reads like
one uninterrupted run.

A sink whose package is missing (``tensorboard``, ``wandb``) is skipped with a note naming the package to
install; the run goes on with JSON Lines.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def plain_number(value: Any) -> Any:
    """A Python number (or str/bool/None) for ``value``; tensors and NumPy scalars become floats."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with non-finite floats replaced by None (strict JSON)."""
    out = {}
    for key, value in metrics.items():
        value = plain_number(value)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a metrics file (a torn last line, from a kill mid-write, is ignored)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_after_step(path: Path, step: int) -> int:
    """Drop the lines of ``path`` about steps after ``step``; return how many were dropped (atomic)."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(kept)


class MetricsLog:
    """The run's metric sinks. Only the main process writes; on other ranks every call does nothing."""

    def __init__(self, output_dir: str | Path, report_to: list[str], *, enabled: bool = True,
                 run_name: str = "train", wandb_project: str = "rlhfkit") -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.report_to = list(report_to)
        self.enabled = enabled
        self.run_name = run_name
        self.wandb_project = wandb_project
        self.notes: list[str] = []
        self.wandb_run_id: str | None = None
        self._file = None
        self._tensorboard = None
        self._wandb = None

    def open(self, resume_step: int, config: dict[str, Any], wandb_run_id: str | None = None) -> None:
        """Open the sinks; when resuming at ``resume_step`` (0: a fresh run) drop the lines written after it."""
        if not self.enabled:
            return
        if resume_step:
            truncate_after_step(self.path, resume_step)
        elif self.path.exists():  # a fresh run: lines from an earlier attempt that never checkpointed
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        if "tensorboard" in self.report_to:
            self._open_tensorboard(resume_step)
        if "wandb" in self.report_to:
            self._open_wandb(config, wandb_run_id)

    def _open_tensorboard(self, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.notes.append("report_to has tensorboard but the tensorboard package is not installed "
                              "(pip install tensorboard); logging to metrics.jsonl only")
            return
        # purge_step drops events a crashed run wrote after the checkpoint we resume from.
        purge = resume_step + 1
        self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=purge)

    def _open_wandb(self, config: dict[str, Any], run_id: str | None) -> None:
        try:
            import wandb
        except ImportError:
            self.notes.append("report_to has wandb but the wandb package is not installed "
                              "(pip install wandb); logging to metrics.jsonl only")
            return
        # Resuming reuses the W&B run id saved in the checkpoint, so one run stays one W&B run.
        self._wandb = wandb.init(project=self.wandb_project, name=self.run_name, config=config,
                                 dir=str(self.path.parent), id=run_id, resume="allow")
        self.wandb_run_id = self._wandb.id

    def log(self, step: int, metrics: dict[str, Any], *, to_dashboards: bool = True) -> None:
        """One JSON line for ``step``; the dashboards too when ``to_dashboards``."""
        if not self.enabled:
            return
        row = {"step": step, **json_safe(metrics)}
        self._write(row)
        if not to_dashboards:
            return
        numbers = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        numbers.pop("step")
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def event(self, name: str, step: int, **fields: Any) -> None:
        """An event line (``resume``, ``run_end`` …) in metrics.jsonl."""
        if self.enabled:
            self._write({"event": name, "step": step, **json_safe(fields)})

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError("MetricsLog.open() was not called")
        self._file.write(json.dumps(row, sort_keys=False) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Make the lines written so far durable (called with each checkpoint)."""
        if self._file is not None:
            os.fsync(self._file.fileno())
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class Progress:
    """A tqdm bar with the key metrics (loss, lr, gradient norm, first eval metrics); without a bar, a
    console line every ``log_every`` steps. Silent on processes other than the main one."""

    def __init__(self, total: int, initial: int, log_every: int, *, bar: bool, enabled: bool,
                 name: str) -> None:
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self._bar = None
        if bar and enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc=name, file=sys.stderr)

    def update(self, step: int, row: dict[str, Any]) -> None:
        keys = [k for k in row if k.endswith("loss") and not k.startswith("eval/")][:1]
        keys += ["train/lr", "train/grad_norm"] + [k for k in row if k.startswith("eval/")][:2]
        shown = {k.split("/")[-1]: row[k] for k in keys if isinstance(row.get(k), int | float)}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            self._bar.update(1)
        elif self.enabled and (step % self.log_every == 0 or step == self.total):
            say(f"step {step}/{self.total} " + " ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def is_main_process() -> bool:
    """Whether this process speaks for the run: the only process, or rank 0 of a multi-process launch.

    The launchers (torchrun, ``accelerate launch``, deepspeed) set ``RANK`` before any process group exists,
    so the setup lines printed before the training loop builds its Accelerator are covered too."""
    dist = sys.modules.get("torch.distributed")  # never imported here: the core imports light
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def quiet_other_processes() -> None:
    """In a multi-process run, keep every process but the main one from printing what the main one prints
    (all run the same code): their standard output goes to /dev/null, and transformers' progress bars
    and info logs are off. Standard error stays, so an error on any process is still seen."""
    if is_main_process():
        return
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def say(message: str) -> None:
    """A line for the person running the job, on stderr, without breaking a tqdm bar; in a multi-process
    run only the main process says it (every process runs the same setup)."""
    if not is_main_process():
        return
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, file=sys.stderr)
