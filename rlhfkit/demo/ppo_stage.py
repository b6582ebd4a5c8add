"""The demo's PPO stage: PPO from SFT with the reward model, watched by the reward-hacking monitor.

Two things watch the run without changing it:

- :class:`RolloutRecorder` wraps the reward-model scorer PPO calls once per step (``train(cfg, scorer=…)``):
  it returns the reward model's scores unchanged and records, per step, the mean proxy score, the gold
  utility of the same rollouts, their KL (k1, from the rollout's log-probs) and length
  (``rollout_gold.jsonl``) — the data of the report's "gold vs proxy" plot, at no extra sampling cost;
- the :class:`~rlhfkit.evaluate.hacking.HackingMonitor` on held-out prompts. When ``ppo.train`` accepts
  ``monitor=`` (the hook), PPO calls it after each step: it samples, scores, keeps the best policy by the
  gold judge and may stop the run. Otherwise the monitor is fed *passively* from PPO's own held-out
  evaluation (``data.eval_file`` = the monitor's prompts, every ``hacking.every`` steps), which the
  recorder sees too: warnings and history, no checkpoint, no stop.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from rlhfkit.demo.pipeline import Context, read_pairs
from rlhfkit.demo.runner import say


class RolloutRecorder:
    """A :class:`~rlhfkit.rollout.score.Scorer` that passes the inner scorer's scores through and records
    proxy, gold, KL and length of every rollout (see the module docstring).

    Calls on the held-out ``monitor_prompts`` are PPO's evaluations: they go to ``monitor.observe`` (passive
    mode). Other calls are training steps, counted from ``start_step`` (the step PPO resumes from).
    """

    def __init__(self, inner, tokenizer, eos_ids, gold, path: Path, *, start_step: int = 0, monitor=None,
                 monitor_prompts: set[str] | None = None) -> None:
        self.inner, self.tokenizer, self.eos_ids, self.gold = inner, tokenizer, eos_ids, gold
        self.path, self.step, self.monitor = Path(path), start_step, monitor
        self.monitor_prompts = monitor_prompts or set()
        self._truncate_after(start_step)

    @property
    def model(self):
        """The reward model, so PPO moves it to the training device with the other frozen models."""
        return getattr(self.inner, "model", None)

    def __call__(self, prompts, rollout):
        from rlhfkit.ops import masked_sum
        from rlhfkit.rollout.score import assistant_contents, response_texts
        from rlhfkit.worlds.text import word_count

        scores = self.inner(prompts, rollout)
        texts = assistant_contents(self.tokenizer, prompts, response_texts(self.tokenizer, rollout, self.eos_ids))
        gold = [self.gold.score(p, t) for p, t in zip(prompts, texts)]
        kl = masked_sum(rollout.logprobs - rollout.ref_logprobs, rollout.response_mask, dim=1)  # (B,) k1
        proxy = [float(s) for s in scores]
        if self.monitor is not None and prompts and prompts[0] in self.monitor_prompts:
            self.monitor.observe(self.step, list(prompts), texts, proxy, judge_scores=gold, kl=float(kl.mean()))
            return scores
        self.step += 1
        n = len(texts)
        record = {"step": self.step, "proxy": sum(proxy) / n, "gold": sum(gold) / n, "kl": float(kl.mean()),
                  "length": sum(word_count(t) for t in texts) / n}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return scores

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


def supports_monitor_hook() -> bool:
    """Whether ``rlhfkit.trainers.ppo.train`` takes ``monitor=`` (the hook) — else the monitor is passive."""
    from rlhfkit.trainers.ppo import train

    return "monitor" in inspect.signature(train).parameters


def build_monitor(ctx: Context, folder: Path):
    from rlhfkit.evaluate.hacking import HackingMonitor, MonitorConfig
    from rlhfkit.judges.reward_model import RewardModelJudge

    h = ctx.cfg.hacking
    settings = {k: getattr(h, k) for k in MonitorConfig.__dataclass_fields__}
    settings["seed"] = ctx.cfg.seed
    prompts = [row["prompt"] for row in read_pairs(ctx.file("samples", "monitor_prompts.jsonl"))]
    return HackingMonitor(prompts, RewardModelJudge.from_folder(ctx.final("reward")), ctx.gold,
                          MonitorConfig(**settings), reference=ctx.model("sft"), out_dir=folder / "monitor")


def ppo_stage(ctx: Context, folder: Path, config) -> dict[str, Any]:
    from rlhfkit.engine import checkpoint as ckpt
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.rollout.score import RewardModelScorer
    from rlhfkit.trainers import ppo
    from rlhfkit.trainers.ppo_models import eos_token_ids

    tokenizer, sft = ctx.tokenizer(), ctx.model("sft")
    eos_ids = eos_token_ids(tokenizer, sft)
    reward_model, reward_tok = load_reward_model(config.reward_model.path, config.model.dtype)
    inner = RewardModelScorer(reward_model.requires_grad_(False).eval(), reward_tok, tokenizer,
                              retokenize=config.reward_model.retokenize, template=config.reward_model.template,
                              policy_template=config.data.template, batch_size=config.rollout.chunk_size,
                              eos_token_id=eos_ids)
    latest, _ = ckpt.find_latest_checkpoint(folder)
    start = int(latest.name.rsplit("-", 1)[1]) if latest is not None else 0
    monitor = build_monitor(ctx, folder) if ctx.cfg.hacking.enabled else None
    active = monitor is not None and supports_monitor_hook()
    monitor_prompts = set(monitor.prompts) if monitor is not None and not active else set()
    recorder = RolloutRecorder(inner, tokenizer, eos_ids, ctx.gold, folder / "rollout_gold.jsonl",
                               start_step=start, monitor=None if active else monitor, monitor_prompts=monitor_prompts)
    if monitor is not None and not active:  # the recipe points PPO's evaluation at the monitor's prompts
        say("hacking monitor: passive (ppo.train has no monitor hook): PPO's held-out evaluation feeds it; "
            "it warns but cannot keep the best checkpoint or stop the run")
    summary = ppo.train(config, scorer=recorder, monitor=monitor) if active else ppo.train(config, scorer=recorder)
    out = {"final_dir": str(folder / "final"), "status": summary.status, "steps": summary.step,
           "monitor_mode": "hook" if active else ("passive" if monitor is not None else "off"),
           **{k: summary.last_metrics.get(k) for k in ("objective/rm_score", "objective/kl", "objective/kl_coef",
                                                       "response/length_mean", "response/eos_rate")}}
    if monitor is not None:
        out["monitor"] = monitor_verdict(monitor)
        best_dir = folder / "monitor" / "best_by_judge"
        out["monitor"]["best_dir"] = str(best_dir) if best_dir.exists() else None
    return out


def monitor_verdict(monitor) -> dict[str, Any]:
    """The monitor's history condensed for the report: best step, first confirmed divergence, a sentence."""
    from rlhfkit.evaluate.hacking import read_history

    checks = read_history(monitor.out_dir / "monitor.jsonl") if monitor.out_dir else []
    best = max(checks, key=lambda c: c["judge"], default=None)
    diverged = next((c for c in checks if any("exploiting" in w for w in c.get("warnings", []))), None)
    drift = next((c for c in checks if any("drifted" in w for w in c.get("warnings", []))), None)
    if not checks:
        verdict = "no check ran"
    elif diverged is None:
        verdict = (f"no divergence between the reward model and the gold judge over {len(checks)} held-out checks; "
                   f"best gold utility {best['judge']:+.3f} at step {best['step']}")
    else:
        verdict = (f"divergence confirmed at step {diverged['step']}: the reward model's score kept rising while the "
                   f"gold utility fell from {best['judge']:+.3f} (step {best['step']})")
    if drift is not None:
        verdict += f"; response length drifted beyond the threshold at step {drift['step']}"
    return {"checks": len(checks), "best_step": best["step"] if best else None,
            "best_judge": best["judge"] if best else None,
            "divergence_step": diverged["step"] if diverged else None, "verdict": verdict}
