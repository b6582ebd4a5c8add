"""The rlvr preset's report: ``report.json``, ``report.md`` and ``reward.png`` (training reward by step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.demo.runner import read_json, write_json_atomically
from rlhfkit.evaluate.accuracy import accuracy_summary


def _answers(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines() if line.strip()]


def _training_curve(metrics_file: Path) -> list[tuple[int, float]]:
    """``(step, mean reward of the step's responses)`` from the GRPO run's metrics.jsonl."""
    curve = []
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            value = row.get("reward/correct/mean", row.get("objective/scores"))
            if "step" in row and value is not None:
                curve.append((int(row["step"]), float(value)))
    return curve


def _plot(curve: list[tuple[int, float]], path: Path) -> Path | None:
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("share of sampled answers right")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(cfg, out: Path, runner, *, preset: str, argv: list[str]) -> dict[str, Any]:
    results = runner.results
    before, after = _answers(results["before"].folder), _answers(results["after"].folder)
    summary = accuracy_summary([r["correct"] for r in before], [r["correct"] for r in after],
                               n_bootstrap=cfg.eval.n_bootstrap, seed=cfg.seed)
    problems = [json.loads(line) for line in
                Path(results["problems"].summary["eval_file"]).read_text().splitlines() if line.strip()]
    curve = _training_curve(Path(cfg.out) / "04-grpo" / "metrics.jsonl")
    plot = _plot(curve, out / "reward.png")
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for problem, b, a in zip(problems, before, after):
        by_kind.setdefault(problem.get("kind", "?"), []).append((b["correct"], a["correct"]))
    kinds = {k: {"problems": len(v), "before": sum(b for b, _ in v) / len(v), "after": sum(a for _, a in v) / len(v)}
             for k, v in sorted(by_kind.items())}
    changed = [i for i, (b, a) in enumerate(zip(before, after)) if b["correct"] != a["correct"]]
    examples = [{"problem": problems[i]["prompt"][-1]["content"], "answer": problems[i]["answer"],
                 "before": before[i]["response"], "after": after[i]["response"]}
                for i in (changed + [i for i in range(len(problems)) if i not in changed])[: cfg.eval.examples]]
    report = {"format": 1, "preset": preset, "argv": argv, "seed": cfg.seed, "accuracy": summary,
              "kinds": kinds, "tokens": {"before": results["before"].summary["mean_tokens"],
                                         "after": results["after"].summary["mean_tokens"]},
              "max_new_tokens": cfg.eval.max_new_tokens, "stages": runner.times(),
              "total_seconds": runner.elapsed(), "training_curve": curve, "examples": examples,
              "plot": str(plot) if plot else None}
    write_json_atomically(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    return read_json(out / "report.json")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render_markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    minutes = report["total_seconds"] / 60
    lines = [
        "# RL with a verifiable reward: SmolLM2-135M-Instruct on arithmetic word problems",
        "",
        f"Greedy accuracy on {acc['problems']} held-out problems (their sums never trained on), answers within "
        f"{report['max_new_tokens']} tokens; 95 % bootstrap intervals over problems, the gain's paired.",
        "",
        "| | accuracy | 95 % interval |",
        "|---|---|---|",
        f"| before (the pretrained chat model) | {_pct(acc['before'])} | "
        f"[{_pct(acc['before_ci_low'])}, {_pct(acc['before_ci_high'])}] |",
        f"| after GRPO | {_pct(acc['after'])} | [{_pct(acc['after_ci_low'])}, {_pct(acc['after_ci_high'])}] |",
        f"| **gain** | **{100 * acc['gain']:+.1f} pts** | [{100 * acc['gain_ci_low']:+.1f}, "
        f"{100 * acc['gain_ci_high']:+.1f}] |",
        "",
        f"Problems fixed: {_pct(acc['fixed'])}; broken: {_pct(acc['broken'])}. Mean answer length "
        f"{report['tokens']['before']:.1f} → {report['tokens']['after']:.1f} tokens. Whole run "
        f"{minutes:.1f} min.",
        "",
        "| kind | problems | before | after |",
        "|---|---|---|---|",
        *[f"| {k} | {v['problems']} | {_pct(v['before'])} | {_pct(v['after'])} |" for k, v in report["kinds"].items()],
        "",
        "| stage | seconds | reused |",
        "|---|---|---|",
        *[f"| {k} | {v['seconds']:.0f} | {v['reused']} |" for k, v in report["stages"].items()],
        "",
    ]
    if report.get("plot"):
        lines += ["![training reward](reward.png)", ""]
    lines += ["## Examples (problems whose outcome changed first)", ""]
    for ex in report["examples"]:
        lines += [f"- **{ex['problem']}** (answer {ex['answer']})",
                  f"  - before: {ex['before']!r}", f"  - after: {ex['after']!r}"]
    return "\n".join(lines) + "\n"
