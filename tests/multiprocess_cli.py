"""The rlhfkit CLI as a launcher runs it, plus what tests/test_multiprocess.py compares:

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/multiprocess_cli.py OUT sft key=value …

runs ``rlhfkit sft key=value …`` unchanged in every process; when a training loop ends, each process writes
the weights it holds (the unwrapped model's state dict; under FSDP2 the gathered whole weights, and in
``OUT/shards_rank{index}.pt`` what it held of each parameter) to ``OUT/rank{process index}.pt``. Test-side only: it
wraps ``TrainLoop.__exit__`` here, the library is untouched. With ``MP_TEST_KILL_AFTER_STEP=N`` every process
SIGKILLs itself right after finishing step N (for kill-and-resume tests).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from rlhfkit.cli import main
from rlhfkit.engine import fsdp
from rlhfkit.engine.loop import TrainLoop

out = Path(sys.argv[1])
original_exit = TrainLoop.__exit__


def exit_and_dump(self, exc_type, exc, tb):
    result = original_exit(self, exc_type, exc, tb)
    if exc is None:
        out.mkdir(parents=True, exist_ok=True)
        rank = self.accelerator.process_index
        if fsdp.is_sharded(self.model):  # the whole weights (gathered), and what this process held of each
            torch.save(shard_report(self.model), out / f"shards_rank{rank}.pt")
            state = fsdp.full_state_dict(self.model)
        else:
            state = self.unwrapped_model.state_dict()
        # clone: tied parameters share memory, and each tensor is stored on its own
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        torch.save(state, out / f"rank{rank}.pt")
    return result


def shard_report(model: torch.nn.Module) -> dict[str, dict]:
    """For every parameter: its type's name, this process's element count and the whole parameter's."""
    return {name: {"type": type(p.data).__name__, "local": fsdp.local(p.data).numel(), "global": p.numel()}
            for name, p in model.named_parameters()}


TrainLoop.__exit__ = exit_and_dump

kill_after = os.environ.get("MP_TEST_KILL_AFTER_STEP")
if kill_after:  # every process SIGKILLs itself once step N is finished (and checkpointed, when due)
    original_finish = TrainLoop.finish_step

    def finish_step_then_die(self, metrics=None):
        original_finish(self, metrics)
        if self.step == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    TrainLoop.finish_step = finish_step_then_die
sys.exit(main(sys.argv[2:]))
