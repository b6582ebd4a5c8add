"""Reward-hacking monitor: the proxy score against an independent judge on held-out prompts, during PPO.

PPO maximises a *proxy* — the reward model's score. Past some KL from the reference the policy starts to
find what the reward model overrates, and the proxy keeps rising while the true quality falls (Gao et al.
2022, "Scaling laws for reward model overoptimization"). The monitor watches for that every ``every``
steps: it samples the policy on a fixed set of **held-out** prompts (never trained on), scores the samples
with the proxy *and* an independent judge (the gold judge in the built-in world; an AI judge or a second
reward model outside it), estimates KL(policy ‖ reference) and the mean response length, and

- **warns** when the proxy has risen above its value at the judge's best check while the judge has fallen
  from that best by more than ``judge_drop`` and by more than ``z`` paired standard errors, for
  ``patience`` checks in a row (:func:`judge_drop_since_best`); and when the mean length drifts by more than
  ``length_drift`` (relative) from the first check — length is the classic thing a reward model overrates;
- **keeps the best checkpoint by the judge**: whenever a check sets a new best judge score, the policy is
  saved to ``out_dir/best_by_judge`` (a plain transformers folder; ``monitor_best.json`` says which step);
- **can stop** the run at a confirmed divergence (``stop=true``): the check says so, the trainer ends.

The samples use one fixed seed at every check (common random numbers), so two checks of similar policies
differ by the policy, not by sampling luck, and paired differences per (prompt, sample) are meaningful.

Two ways to feed it:

* **the PPO hook** — ``monitor(step, total_steps, policy, tokenizer) -> MonitorCheck | None``, called by
  the trainer after each step; the monitor samples, scores and saves itself (needs ``proxy`` with
  ``score_batch``/``score``, the ``reference`` model for KL);
* **observations** — :meth:`HackingMonitor.observe` with responses and scores computed elsewhere (e.g.
  from PPO's own held-out evaluation rollouts), when the trainer cannot call a hook: warnings and history
  only, no checkpoint.

History goes to ``out_dir/monitor.jsonl`` (one line per check); :meth:`state_dict` / :meth:`load_state_dict`
let a trainer checkpoint the monitor with its own state, so a resumed run continues the same history.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError


@dataclass
class MonitorConfig:
    every: int = 10
    """Check every N PPO steps (and at the last step)."""
    samples_per_prompt: int = 1
    """Responses sampled per held-out prompt at each check (temperature 1)."""
    max_new_tokens: int = 48
    batch_size: int = 64
    """Rows per generation batch (samples depend on it: keep it fixed across checks)."""
    seed: int = 0
    """The sampling seed, the same at every check (common random numbers)."""
    judge_drop: float = 0.05
    """Divergence: the judge's mean fell at least this much from its best check (judge units) …"""
    z: float = 2.0
    """… and by more than ``z`` paired standard errors, while the proxy is above its value at that best."""
    patience: int = 2
    """Consecutive diverging checks before the warning (and the stop, if enabled)."""
    length_drift: float = 0.5
    """Warn when the mean response length moved by more than this fraction of the first check's."""
    stop: bool = False
    """Stop training at a confirmed divergence (the best checkpoint by the judge is kept either way)."""
    keep_best: bool = True
    """Save the policy to ``out_dir/best_by_judge`` whenever the judge's score is the best so far."""

    def validate(self) -> None:
        if self.every < 1 or self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("every, samples_per_prompt, max_new_tokens and batch_size must be at least 1")
        if self.judge_drop < 0 or self.z < 0 or self.length_drift <= 0 or self.patience < 1:
            raise ConfigError("judge_drop and z must be >= 0, length_drift > 0, patience >= 1")


@dataclass
class MonitorPoint:
    """One check: means over the held-out samples."""

    step: int
    proxy: float  # mean proxy score (the reward model's, on its own scale)
    judge: float  # mean independent-judge score
    kl: float | None  # KL(policy ‖ reference), nats per sequence; None without a reference
    length: float  # mean words per response
    n: int  # samples


@dataclass
class MonitorCheck:
    """What one check found. ``metrics()`` are the ``hacking/*`` keys a trainer logs."""

    point: MonitorPoint
    best_step: int  # step of the best judge score so far
    best_judge: float
    improved: bool  # this check is the new best
    judge_drop: float  # best judge − this judge (0 at the best)
    drop_stderr: float  # paired standard error of that drop
    diverging: bool  # this check meets the divergence condition
    streak: int  # consecutive diverging checks, this one included
    length_drift: float  # (length − first length) / first length
    warnings: list[str] = field(default_factory=list)
    stop: bool = False  # confirmed divergence and ``stop`` enabled
    saved: str | None = None  # folder the best policy was saved to at this check

    def metrics(self) -> dict[str, float]:
        p = self.point
        out = {"hacking/proxy_score": p.proxy, "hacking/judge_score": p.judge, "hacking/length_mean": p.length,
               "hacking/length_drift": self.length_drift, "hacking/judge_drop": self.judge_drop,
               "hacking/judge_drop_stderr": self.drop_stderr, "hacking/best_step": float(self.best_step),
               "hacking/diverging": float(self.diverging), "hacking/streak": float(self.streak)}
        if p.kl is not None:
            out["hacking/kl"] = p.kl
        return out


def judge_drop_since_best(best_scores: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """Paired drop of the judge since its best check, and its standard error.

    ``d_i = best_i − now_i`` per (prompt, sample) in the same order (the same prompts and sampling seed at
    every check); returns ``(mean(d), std(d, ddof=1) / √n)``. Pairing removes the prompts' own difficulty
    from the noise, so a real drop is detected with far fewer prompts than two independent means would need.
    """
    if len(best_scores) != len(scores) or not scores:
        raise ValueError(f"need two equal, non-empty lists of scores, got {len(best_scores)} and {len(scores)}")
    diffs = [b - s for b, s in zip(best_scores, scores)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, 0.0
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(variance / n)


def is_diverging(best: MonitorPoint, now: MonitorPoint, drop: float, stderr: float, judge_drop: float,
                 z: float) -> bool:
    """The proxy is above its value at the judge's best while the judge fell by more than ``judge_drop`` and
    ``z`` standard errors: the policy improves what the reward model measures and worsens what it should."""
    return now.step > best.step and now.proxy > best.proxy and drop > judge_drop and drop > z * stderr


def relative_drift(first: float, now: float) -> float:
    """``(now − first) / first``; 0 when ``first`` is 0."""
    return (now - first) / first if first else 0.0


class HackingMonitor:
    """Watches PPO for reward hacking on held-out ``prompts`` (see the module docstring).

    ``proxy`` and ``judge`` follow the judge interface (``score``/``score_batch``): ``proxy`` is what PPO
    optimises (a :class:`~rlhfkit.judges.reward_model.RewardModelJudge`), ``judge`` the independent one.
    ``reference``: the frozen reference policy, for KL (None: no KL). ``out_dir``: where the history and the
    best checkpoint go (None: memory only).
    """

    def __init__(self, prompts: Sequence[Any], proxy: Any, judge: Any, config: MonitorConfig | None = None, *,
                 reference: Any = None, out_dir: str | Path | None = None) -> None:
        if not prompts:
            raise ValueError("the hacking monitor needs held-out prompts")
        self.prompts = list(prompts)
        self.proxy, self.judge, self.reference = proxy, judge, reference
        self.config = config or MonitorConfig()
        self.config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[MonitorPoint] = []
        self.judge_scores: dict[int, list[float]] = {}  # step -> per-sample judge scores, for paired drops
        self.streak = 0
        self._length_warned = False

    # ------------------------------------------------------------------ the PPO hook

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.config.every == 0 or step == total_steps

    def __call__(self, step: int, total_steps: int, policy: Any, tokenizer: Any) -> MonitorCheck | None:
        """The hook: a :meth:`check` when ``step`` is due, else None."""
        return self.check(step, policy, tokenizer) if self.due(step, total_steps) else None

    def check(self, step: int, policy: Any, tokenizer: Any) -> MonitorCheck:
        """Sample ``policy`` on the held-out prompts, score with proxy and judge, estimate KL; keep the best.

        Runs in eval mode without gradients and restores the policy's training flag; sampling uses its own
        seeded generator, so the trainer's random streams are untouched.
        """
        import torch

        from rlhfkit.evaluate.kl import sequence_kl
        from rlhfkit.evaluate.sampling import sample_policy

        cfg = self.config
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad():
                samples = sample_policy(policy, tokenizer, self.prompts, cfg.samples_per_prompt, seed=cfg.seed,
                                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
                kl = None
                if self.reference is not None:
                    kl = sequence_kl(policy, self.reference, samples, batch_size=16).nats_per_seq
        finally:
            policy.train(was_training)
        prompts = [p for p in samples.prompts for _ in range(cfg.samples_per_prompt)]
        responses = [r for rs in samples.texts for r in rs]
        result = self.observe(step, prompts, responses, _scores(self.proxy, prompts, responses), kl=kl)
        if result.improved and cfg.keep_best and self.out_dir is not None:
            result.saved = str(self._save_best(policy, tokenizer, result.point))
        return result

    # ------------------------------------------------------------------ the core

    def observe(self, step: int, prompts: Sequence[Any], responses: Sequence[str], proxy_scores: Sequence[float],
                *, judge_scores: Sequence[float] | None = None, kl: float | None = None) -> MonitorCheck:
        """Record one check from responses scored elsewhere; return what it found (and print warnings)."""
        from rlhfkit.worlds.text import word_count

        if judge_scores is None:
            judge_scores = _scores(self.judge, prompts, responses)
        if not (len(prompts) == len(responses) == len(proxy_scores) == len(judge_scores)) or not responses:
            raise ValueError("observe needs one prompt, response, proxy score and judge score per sample")
        self._forget_from(step)  # a resumed run re-checks steps a killed run had already checked
        n = len(responses)
        point = MonitorPoint(step, sum(proxy_scores) / n, sum(judge_scores) / n, kl,
                             sum(word_count(r) for r in responses) / n, n)
        best = self.best_point()
        best_scores = self.judge_scores.get(best.step, []) if best is not None else []
        comparable = len(best_scores) == n
        drop, stderr = judge_drop_since_best(best_scores, judge_scores) if comparable else (0.0, 0.0)
        improved = best is None or point.judge > best.judge
        diverging = comparable and is_diverging(best, point, drop, stderr, self.config.judge_drop, self.config.z)
        self.streak = self.streak + 1 if diverging else 0
        self.history.append(point)
        self.judge_scores[step] = [float(s) for s in judge_scores]
        if improved:
            best, drop, stderr = point, 0.0, 0.0
        check = MonitorCheck(point, best.step, best.judge, improved, drop, stderr, diverging, self.streak,
                             relative_drift(self.history[0].length, point.length))
        self._warn(check, best)
        self._append_record(check)
        return check

    def best_point(self) -> MonitorPoint | None:
        """The check with the highest judge score (the first of equals)."""
        best = None
        for point in self.history:
            if best is None or point.judge > best.judge:
                best = point
        return best

    def _warn(self, check: MonitorCheck, best: MonitorPoint) -> None:
        """Fill ``check.warnings`` and ``check.stop``; print a divergence when it is confirmed and every 5
        checks while it lasts, a length drift the first time."""
        from rlhfkit.engine.metrics_log import say

        cfg, p = self.config, check.point
        if check.streak >= cfg.patience:
            message = (f"step {p.step}: the proxy score rose {p.proxy - best.proxy:+.3f} since step {best.step} "
                       f"while the independent judge fell {check.judge_drop:.3f} (± {check.drop_stderr:.3f}) — "
                       f"the policy is exploiting the reward model; best by the judge: step {best.step}")
            check.warnings.append(message)
            check.stop = cfg.stop
            if (check.streak - cfg.patience) % 5 == 0:
                say(f"hacking monitor: {message}")
        if abs(check.length_drift) > cfg.length_drift:
            message = (f"step {p.step}: mean response length {p.length:.1f} words drifted "
                       f"{check.length_drift:+.0%} from step {self.history[0].step}")
            check.warnings.append(message)
            if not self._length_warned:
                self._length_warned = True
                say(f"hacking monitor: {message}")

    # ------------------------------------------------------------------ persistence

    def _forget_from(self, step: int) -> None:
        if any(p.step >= step for p in self.history):
            self.history = [p for p in self.history if p.step < step]
            self.judge_scores = {k: v for k, v in self.judge_scores.items() if k < step}
            self.streak = 0  # the checks behind the streak are gone; it restarts
        path = self._record_path()
        if path is not None and path.exists():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] < step]
            if len(kept) != len(lines):
                path.write_text("".join(line + "\n" for line in kept))

    def _record_path(self) -> Path | None:
        return self.out_dir / "monitor.jsonl" if self.out_dir is not None else None

    def _append_record(self, check: MonitorCheck) -> None:
        path = self._record_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**dataclasses.asdict(check.point), **{k: v for k, v in check.metrics().items()},
                  "warnings": check.warnings}
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _save_best(self, policy: Any, tokenizer: Any, point: MonitorPoint) -> Path:
        from rlhfkit.engine.checkpoint import save_folder_atomically
        from rlhfkit.models.lora import save_policy

        def write(folder: Path) -> None:
            save_policy(policy, folder, merge=True, tokenizer=tokenizer)
            (folder / "monitor_best.json").write_text(json.dumps(dataclasses.asdict(point), indent=2))

        return save_folder_atomically(self.out_dir / "best_by_judge", write)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dataclasses.asdict(p) for p in self.history],
                "judge_scores": {str(k): v for k, v in self.judge_scores.items()}, "streak": self.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [MonitorPoint(**p) for p in state["history"]]
        self.judge_scores = {int(k): [float(x) for x in v] for k, v in state["judge_scores"].items()}
        self.streak = int(state["streak"])

    def summary(self) -> dict[str, Any]:
        """For a report: every check, the best step by the judge, and the first confirmed divergence."""
        best = self.best_point()
        return {"checks": [dataclasses.asdict(p) for p in self.history],
                "best_step": best.step if best else None, "best_judge": best.judge if best else None,
                "config": dataclasses.asdict(self.config)}


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``monitor.jsonl`` (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scores(judge: Any, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    from rlhfkit.judges.base import score_all

    return score_all(judge, list(prompts), list(responses))
