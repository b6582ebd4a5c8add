"""``multiprocess_cli.py`` for PPO with rollouts that do not depend on the process count (test-side only).

    accelerate launch … tests/multiprocess_ppo_rows.py OUT ppo key=value …

Each process normally samples its share of the prompts with its own generator, so a 2-process run samples other
responses than a 1-process run and the two cannot be compared. Here every prompt is sampled alone, with a
generator seeded by (step, the prompt's dataset index, which of its ``rollout.n`` copies it is — the critic-free
estimators' groups): the step's rows are the same however the prompts are split across processes, and what
remains to compare is the objective itself (token means, whitening).
Each prompt's ``max_new_tokens`` also depends on its index (4 … 12), so the processes hold different numbers
of response tokens.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

from rlhfkit.rollout.experience import Rollout
from rlhfkit.trainers.ppo import PPOTrainer

original_collect = PPOTrainer.collect
calls = {"n": 0}


def collect_row_by_row(self, batch, prompts, generator, fields=None):
    calls["n"] += 1
    parts, extras, copies = [], {}, {}
    longest = self.cfg.rollout.max_new_tokens
    for example, prompt in zip(batch, prompts):
        copy = copies[example.index] = copies.get(example.index, -1) + 1  # a group's responses differ
        seed = 1000 * calls["n"] + example.index + 100_000 * copy
        row_generator = torch.Generator(device=self.loop.device).manual_seed(seed)
        self.cfg.rollout.max_new_tokens = 4 + example.index % (longest - 3)
        try:
            rollout, row_extras = original_collect(self, [example], [prompt], row_generator, fields)
        finally:
            self.cfg.rollout.max_new_tokens = longest
        parts.append(rollout)
        for key, value in row_extras.items():
            extras.setdefault(key, []).append(value)
    return Rollout.cat(parts).validate(), {k: torch.cat(v) for k, v in extras.items()}


PPOTrainer.collect = collect_row_by_row
sys.argv = [str(Path(__file__).with_name("multiprocess_cli.py")), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
