"""What the checkpoint checksums cost: writing a checkpoint with CRC-32s against the old path (sizes only),
and verifying one at resume against the size check alone. Run by hand, never in the test suite::

    .venv/bin/python benchmarks/bench_checkpoint_checksum.py --params 25 --repeats 5

A checkpoint here is what the loop writes for a full fine-tune: the model as ``model.safetensors`` (fp32)
and an AdamW state with two moments per weight (``optimizer.pt``, 2x the model), fsynced and committed
with a manifest. "old" replaces the two checksum paths — ``save_torch``'s CRC writer and the read-back of
the other files — by a plain ``torch.save`` and no checksum, the code before checksums. The two arms
alternate; the figure is the median of the per-repeat ratios (the machine is shared and drifts).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from rlhfkit.engine import checkpoint as ckpt


def make_state(millions: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000) for _ in range(millions)])
    moments = {i: {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
               for i, p in enumerate(model.parameters())}
    return model, {"state": moments, "param_groups": [{"lr": 1e-5, "params": list(moments)}]}


@contextmanager
def old_path():
    """The checkpoint code without checksums: plain torch.save, no read-back."""
    saved = ckpt.save_torch, ckpt.file_crc32
    ckpt.save_torch = lambda obj, path: torch.save(obj, path)
    ckpt.file_crc32 = lambda path: ""
    try:
        yield
    finally:
        ckpt.save_torch, ckpt.file_crc32 = saved


def write(root: Path, step: int, model, optimizer_state) -> float:
    clock = time.perf_counter()
    tmp = ckpt.begin_checkpoint(root, step)
    ckpt.save_model(model, tmp / "model")
    ckpt.save_torch(optimizer_state, tmp / ckpt.OPTIMIZER)
    ckpt.commit_checkpoint(tmp, step)
    return time.perf_counter() - clock


def verify(root: Path, content: bool) -> float:
    clock = time.perf_counter()
    latest, _ = ckpt.find_latest_checkpoint(root, verify_content=content)
    assert latest is not None
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=25, help="model size in millions of fp32 parameters")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, optimizer_state = make_state(args.params)
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    try:
        write_ratios, verify_ratios, rows = [], [], []
        for repeat in range(args.repeats):
            arms = ("old", "crc") if repeat % 2 == 0 else ("crc", "old")
            seconds = {}
            for arm in arms:
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                if arm == "old":
                    with old_path():
                        seconds[arm] = write(root, 1, model, optimizer_state)
                else:
                    seconds[arm] = write(root, 1, model, optimizer_state)
                    sizes, crcs = verify(root, False), verify(root, True)
            write_ratios.append(seconds["crc"] / seconds["old"])
            verify_ratios.append(crcs / sizes)
            rows.append((seconds["old"], seconds["crc"], sizes, crcs))
            print(f"repeat {repeat}: write old {seconds['old']:.2f} s, with CRC {seconds['crc']:.2f} s; "
                  f"resume check sizes {sizes:.3f} s, sizes + CRC {crcs:.2f} s")
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
        print(f"checkpoint {total:.0f} MB ({args.params}M fp32 parameters + AdamW moments)")
        print(f"write with CRC / old: median {statistics.median(write_ratios):.3f} "
              f"(min {min(write_ratios):.3f}, max {max(write_ratios):.3f})")
        print(f"resume check with CRC: median {statistics.median(r[3] for r in rows):.2f} s "
              f"({total / statistics.median(r[3] for r in rows):.0f} MB/s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
