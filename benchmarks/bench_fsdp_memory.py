"""Peak resident memory per process: full fine-tuning (AdamW) of a random Llama in 1 process against FSDP2 over 2.

    .venv/bin/python benchmarks/bench_fsdp_memory.py                    # ~134M parameters, 3 steps
    .venv/bin/python benchmarks/bench_fsdp_memory.py --layers 4 --steps 2   # smaller, quicker

Each run is a fresh process (the 2-process run through ``torch.distributed.run``, gloo, one thread each), so
its ``ru_maxrss`` holds only that run. The model is sharded by the code the training loop uses
(``rlhfkit.engine.fsdp.shard``: one FSDP2 unit per decoder layer, the root holding embeddings, norm and head),
the step is forward + backward + ``fsdp.clip_grad_norm_`` + AdamW, the global batch the same in both runs
(``--batch`` rows of ``--seq`` tokens, split over the processes). Per process it reports:

* ``torch``: RSS after importing torch and transformers and joining the group — the floor every process pays;
* ``built``: peak RSS once the whole model is built (every process builds it whole before sharding, as
  rlhfkit loads a model folder whole in every process);
* ``before steps``: RSS once sharded (or, in one process, once built), before the first step;
* ``training``: the largest RSS read during the steps (after each forward, backward and optimizer step) —
  what sharding acts on; the build's peak does not hide it;
* ``peak``: the process's ``ru_maxrss``;
* the bytes this process holds of the parameters, gradients and AdamW moments (counted from the tensors).

On a CPU, run it also with ``MALLOC_MMAP_THRESHOLD_=131072``: with glibc's dynamic mmap threshold the freed
per-layer buffers FSDP2 gathers stay in the heap and hide most of the saving (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.engine import fsdp

    report = {"rank": rank, "processes": world, "torch_mb": current_mb()}

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=args.seq,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["built_mb"] = peak_mb()
    if world > 1:
        fsdp.shard(model, torch.device("cpu"), world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = args.batch // world
    generator = torch.Generator().manual_seed(1 + rank)
    report["before_steps_mb"] = current_mb()
    samples = []
    for _ in range(args.steps):
        ids = torch.randint(0, args.vocab, (rows, args.seq), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        samples.append(current_mb())  # activations kept for the backward
        loss.backward()
        samples.append(current_mb())  # + gradients
        fsdp.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        samples.append(current_mb())  # + AdamW moments
        optimizer.zero_grad(set_to_none=False)  # keep the gradients' memory: it is part of a step's state
    report["training_mb"] = max(samples)
    report["peak_mb"] = peak_mb()
    held = sum(fsdp.local(p.data).numel() for p in model.parameters()) * 4
    moments = sum(fsdp.local(t).numel() * t.element_size() for s in optimizer.state.values()
                  for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
    report.update(param_mb=held / 2**20, grad_mb=held / 2**20, adam_mb=moments / 2**20)
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(report))
    if world > 1:
        dist.destroy_process_group()


def run(args: argparse.Namespace, processes: int) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix=f"fsdp-mem-{processes}-"))
    forwarded = [f"--{k}={getattr(args, k)}" for k in ("layers", "hidden", "vocab", "seq", "batch", "steps")]
    script = [__file__, "--worker", f"--out={out}", *forwarded]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   *script]
    subprocess.run(command, env=env, check=True)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2, help="global batch (rows), split over the processes")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = run(args, 1) + run(args, 2)
    print(f"{rows[0]['parameters'] / 1e6:.1f}M parameters, AdamW, global batch {args.batch} × {args.seq} tokens, "
          f"{args.steps} steps")
    print("| processes | rank | torch | built | before steps | training | peak | params | grads | AdamW |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['rank']} | {r['torch_mb']:.0f} | {r['built_mb']:.0f} | "
              f"{r['before_steps_mb']:.0f} | {r['training_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['param_mb']:.0f} | {r['grad_mb']:.0f} | {r['adam_mb']:.0f} |")
    one, two = rows[0], rows[1:]
    for r in two:
        print(f"rank {r['rank']}: peak {r['peak_mb'] / one['peak_mb']:.2f} of one process's; training "
              f"{r['training_mb'] / one['training_mb']:.2f}, above the torch floor "
              f"{(r['training_mb'] - r['torch_mb']) / (one['training_mb'] - one['torch_mb']):.2f}")


if __name__ == "__main__":
    main()
