"""Sampling under FSDP2: ``rollout.fsdp_sampling=gathered`` against ``sharded``, 2 CPU processes over gloo.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_fsdp_sampling.py            # ~58M params, ~3 min
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_fsdp_sampling.py --layers 12 --hidden 768

A random Llama (untied embeddings) inside PPO's ``ActorCritic`` (policy with a value head) is sharded by the
code the training loop uses (``rlhfkit.engine.fsdp.shard`` with the language model as its own unit, as
``trainers/ppo.py`` does). Each rollout is ``--prompts`` prompts in all (split over the processes, random
lengths 8–24 tokens) × ``--new-tokens`` sampled tokens (temperature 1, EOS never drawn in practice, so every
row runs to the end), through the real path of ``trainers/ppo_rollout.RolloutCollector``: its
``sampling_weights()`` context (``fsdp.gathered`` for ``gathered``, nothing for ``sharded``) around
``rollout.generate.generate(..., synced=collector.synced_sampling)``.

One warm-up per mode, then ``--repeats`` pairs in alternating order (G S, S G, ...). A rollout's time is the
wall time between two barriers (the slower process's). Reported per mode: each time, the median, the ratio
sharded ÷ gathered, the weights each process holds during the rollout (counted from the tensors inside the
mode's context: resident memory would not show it on a CPU — the whole model built before sharding leaves its
freed pages in the heap, which the gathered copy reuses), and whether both modes drew the same tokens (they should: same weights, same
generator).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.engine import fsdp
    from rlhfkit.models.heads import PolicyWithValueHead
    from rlhfkit.rollout.generate import generate
    from rlhfkit.trainers.ppo_models import ActorCritic
    from rlhfkit.trainers.ppo_rollout import RolloutCollector

    torch.manual_seed(0)
    heads = max(1, args.hidden // 64)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=64 + args.new_tokens, tie_word_embeddings=False)
    lm = LlamaForCausalLM(config)
    lm.config.use_cache = True
    actor_critic = ActorCritic(PolicyWithValueHead(lm))
    parameters = sum(p.numel() for p in actor_critic.parameters())
    fsdp.shard(actor_critic, torch.device("cpu"), world, units=(actor_critic.language_model,))
    loop = SimpleNamespace(model=actor_critic, sharded=True)
    from torch.distributed.fsdp import FSDPModule

    # the most weights a sharded forward gathers at once: one unit's own parameters (not its sub-units')
    def own(unit) -> int:
        nested = {id(p) for m in unit.modules() if m is not unit and isinstance(m, FSDPModule) for p in m.parameters()}
        return sum(p.numel() for p in unit.parameters() if id(p) not in nested)

    largest_unit = max(own(m) for m in actor_critic.modules() if isinstance(m, FSDPModule))

    def collector(mode: str) -> RolloutCollector:
        cfg = SimpleNamespace(rollout=SimpleNamespace(fsdp_sampling=mode, old_logprobs="forward"),
                              advantage=SimpleNamespace(critic_free=False))
        return RolloutCollector(cfg, None, loop)

    lengths = torch.Generator().manual_seed(7)
    all_prompts = [torch.randint(3, args.vocab, (int(torch.randint(8, 25, (1,), generator=lengths)),),
                                 generator=lengths).tolist() for _ in range(args.prompts)]
    prompts = all_prompts[rank::world]

    def rollout(mode: str) -> tuple[float, float, torch.Tensor]:
        c = collector(mode)
        generator = torch.Generator().manual_seed(100 + rank)  # the same draws in both modes
        dist.barrier()
        start = time.perf_counter()
        with c.sampling_weights():
            out = generate(c.loop.model.language_model, prompts, max_new_tokens=args.new_tokens, temperature=1.0,
                           eos_token_id=2, pad_token_id=0, generator=generator, return_logprobs=True,
                           synced=c.synced_sampling)
            # still inside the mode's context: the weights this process holds now (gathered: all of them)
            resident = sum(fsdp.local(p.data).numel() * p.element_size() for p in actor_critic.parameters()) / 2**20
        dist.barrier()
        return time.perf_counter() - start, resident, out.response_ids

    times: dict[str, list[float]] = {"gathered": [], "sharded": []}
    rss: dict[str, list[float]] = {"gathered": [], "sharded": []}
    _, _, tokens_s = rollout("sharded")  # warm-up
    _, _, tokens_g = rollout("gathered")  # warm-up
    for i in range(args.repeats):
        for mode in (("gathered", "sharded") if i % 2 == 0 else ("sharded", "gathered")):
            seconds, resident, _ = rollout(mode)
            times[mode].append(seconds)
            rss[mode].append(resident)
    report = {"rank": rank, "processes": world, "parameters": parameters, "times": times, "rss": rss,
              "same_tokens": bool(torch.equal(tokens_s, tokens_g)),
              "largest_unit_mb": largest_unit * 4 / 2**20,
              "held_shard_mb": sum(fsdp.local(p.data).numel() for p in actor_critic.parameters()) * 4 / 2**20,
              "whole_mb": parameters * 4 / 2**20}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per rollout, in all (split over processes)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs (after one warm-up per mode)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    out = Path(tempfile.mkdtemp(prefix="fsdp-sampling-"))
    forwarded = [f"--{k.replace('_', '-')}={getattr(args, k)}"
                 for k in ("layers", "hidden", "vocab", "prompts", "new_tokens", "repeats")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}",
               __file__, "--worker", f"--out={out}", *forwarded]
    subprocess.run(command, env=env, check=True)
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    first = rows[0]
    print(f"command: OMP_NUM_THREADS=1 PYTHONPATH=. {Path(sys.executable).name} benchmarks/bench_fsdp_sampling.py "
          + " ".join(forwarded))
    print(f"{first['parameters'] / 1e6:.1f}M parameters ({first['whole_mb']:.0f} MB float32), {args.processes} "
          f"processes (gloo, 1 thread each), {args.prompts} prompts × {args.new_tokens} new tokens per rollout, "
          f"{args.repeats} timed pairs; same tokens in both modes: {all(r['same_tokens'] for r in rows)}")
    print("| mode | rollout seconds (each) | median | tokens/s (all processes) |")
    print("|---|---|---|---|")
    medians = {}
    for mode in ("gathered", "sharded"):
        each = first["times"][mode]
        medians[mode] = statistics.median(each)
        print(f"| {mode} | {', '.join(f'{t:.2f}' for t in each)} | {medians[mode]:.2f} | "
              f"{args.prompts * args.new_tokens / medians[mode]:.0f} |")
    ratios = [s / g for s, g in zip(first["times"]["sharded"], first["times"]["gathered"])]
    print(f"sharded ÷ gathered: {medians['sharded'] / medians['gathered']:.2f} (medians); per pair "
          + ", ".join(f"{r:.2f}" for r in ratios))
    for r in rows:
        g, s = max(r["rss"]["gathered"]), max(r["rss"]["sharded"])
        print(f"rank {r['rank']}: weights held during the rollout (counted from the tensors): gathered {g:.0f} MB, "
              f"sharded {s:.0f} MB + one unit gathered at a time (largest {r['largest_unit_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
