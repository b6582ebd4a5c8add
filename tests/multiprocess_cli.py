"""The rlhfkit CLI as a launcher runs it, plus what tests/test_multiprocess.py compares:

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/multiprocess_cli.py OUT sft key=value …

runs ``rlhfkit sft key=value …`` unchanged in every process; when a training loop ends, each process writes
the weights it holds (the unwrapped model's state dict) to ``OUT/rank{process index}.pt``. Test-side only: it
wraps ``TrainLoop.__exit__`` here, the library is untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhfkit.cli import main
from rlhfkit.engine.loop import TrainLoop

out = Path(sys.argv[1])
original_exit = TrainLoop.__exit__


def exit_and_dump(self, exc_type, exc, tb):
    result = original_exit(self, exc_type, exc, tb)
    if exc is None:
        out.mkdir(parents=True, exist_ok=True)
        # clone: tied parameters share memory, and each tensor is stored on its own
        state = {k: v.detach().cpu().clone() for k, v in self.unwrapped_model.state_dict().items()}
        torch.save(state, out / f"rank{self.accelerator.process_index}.pt")
    return result


TrainLoop.__exit__ = exit_and_dump
sys.exit(main(sys.argv[2:]))
