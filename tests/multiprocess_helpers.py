"""Launching a script as several CPU processes (gloo) from the tests; the multi-process tests share this.

:func:`cpu_processes` returns the command and environment of ``python SCRIPT ARGS`` for one process, or of a
launcher starting ``processes`` of them: torchrun (``torch.distributed.run --standalone``), or
``accelerate launch`` with ``configs/accelerate/cpu_2proc.yaml`` — what a user types. ``ACCELERATE_USE_CPU=1``
makes the processes CPU ones with gloo (without it, on a machine without a GPU, each would run alone), and one
thread each keeps them from fighting over the cores.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_processes(script: list[str], processes: int = 1, launcher: str = "torchrun",
                  module: bool = False, config: Path = CPU_CONFIG) -> tuple[list[str], dict[str, str]]:
    """``(command, env)`` running ``script`` (a path and its arguments, or with ``module`` a module name and
    its arguments) in ``processes`` CPU processes through ``launcher`` ("torchrun" or "accelerate", with the
    accelerate ``config``: e.g. :data:`FSDP_CONFIG`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    target = ["-m", *script] if module else list(script)
    if processes == 1:
        return [sys.executable, *target], env
    env["ACCELERATE_USE_CPU"] = "1"
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    elif launcher == "accelerate":
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                  "--num_processes", str(processes), "--main_process_port", str(free_port())]
    else:
        raise ValueError(f"unknown launcher {launcher!r}; valid: torchrun, accelerate")
    return [*prefix, *target], env
