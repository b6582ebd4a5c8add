"""The run's report: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html``.

:func:`write_report` takes the report dict the demo assembled (its keys are documented in docs/demo.md;
the per-policy figures are ``evaluate_policy_pair``'s keys, docs/evaluation.md) plus the plot inputs, and
writes the three files and ``plots/*.png``. The HTML embeds every PNG as base64 (one file to mail or open
offline) and escapes every prompt and model output — model text is data, never markup.

The headline columns follow DESIGN.md "Measure honestly": Δ mean gold utility with its bootstrap
interval, the goal-only decisive win rate, the behaviour rates, always beside KL and the incoherent rate;
the win rate with ties counted half is shown with its cap, never alone.

:func:`win_rate_intervals` adds bootstrap intervals to the protocol's win rates (resampling prompts, as
the utility interval does).
"""

from __future__ import annotations

import base64
import html
import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.evaluate import plots
from rlhfkit.worlds.protocol import pair_outcome, quantile

POLICY_ORDER = ("base", "sft", "best_of_n", "dpo", "ppo")
PLOT_TITLES = {
    "ppo_training": "PPO training curves: score and KL",
    "gold_vs_proxy": "Gold vs proxy score against KL",
    "behaviours": "Behaviour rates per family",
    "win_rates": "Δ gold utility and win rates against SFT, with 95 % intervals",
}
# (column header, metric key, format): the results table.
TABLE_COLUMNS = (
    ("Δ utility [95 % CI]", "gold/utility_delta", "ci"),
    ("utility", "gold/utility_a", "f3"),
    ("goal-only decisive win [CI]", "win_rate/goal_decisive", "ci"),
    ("decisive win [CI]", "win_rate/decisive", "ci"),
    ("win, ties ½ (cap)", "win_rate/ties_half", "cap"),
    ("ties", "pairs/tie_fraction", "pct"),
    ("identical", "pairs/identical_fraction", "pct"),
    ("KL nats/seq", "kl/nats_per_seq", "f2"),
    ("incoherent", "rates/a/incoherent", "pct"),
    ("helpful correct", "rates/a/helpful_correct", "pct"),
    ("harmful compliance", "rates/a/harmful_compliance", "pct"),
    ("over-refusal", "rates/a/over_refusal", "pct"),
    ("confabulation", "rates/a/confabulation", "pct"),
    ("sycophantic agreement", "rates/a/sycophantic_agreement", "pct"),
    ("mean words", "length/a/mean_words", "f1"),
)
# The InstructGPT table (``--preset instructgpt``): small policies against the larger SFT-only model.
INSTRUCTGPT_COLUMNS = (
    ("Δ utility [95 % CI]", "gold/utility_delta", "ci"),
    ("goal-only decisive win [CI]", "win_rate/goal_decisive", "ci"),
    ("decisive win [CI]", "win_rate/decisive", "ci"),
    ("win, ties ½ (cap)", "win_rate/ties_half", "cap"),
    ("utility", "gold/utility_a", "f3"),
    ("baseline utility", "gold/utility_b", "f3"),
    ("helpful correct", "rates/a/helpful_correct", "pct"),
    ("incoherent", "rates/a/incoherent", "pct"),
)
INSTRUCTGPT_ROWS = {"sft": "small SFT", "best_of_n": "small best-of-N", "dpo": "small DPO", "ppo": "small PPO",
                    "larger_sft_vs_sft": "larger SFT (against small SFT)"}


# ----------------------------------------------------------------------------- intervals (pure)


def ratio_bootstrap_ci(numerators: Sequence[float], denominators: Sequence[float], n_bootstrap: int = 1000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of ``Σ num / Σ den`` resampling the units (prompts) with replacement.

    Resamples whose denominator is 0 (no decisive pair drawn) are skipped; None when every one is.
    """
    n = len(numerators)
    if n == 0 or n != len(denominators):
        return None, None
    rng = random.Random(seed)
    estimates = []
    for _ in range(n_bootstrap):
        idx = [rng.randrange(n) for _ in range(n)]
        den = sum(denominators[i] for i in idx)
        if den > 0:
            estimates.append(sum(numerators[i] for i in idx) / den)
    if not estimates:
        return None, None
    estimates.sort()
    alpha = (1.0 - confidence) / 2
    return quantile(estimates, alpha), quantile(estimates, 1.0 - alpha)



def win_rate_intervals(judge: Any, prompts: Sequence[Any], texts_a: Sequence[Sequence[str]],
                       texts_b: Sequence[Sequence[str]], *, n_bootstrap: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> dict[str, float | None]:
    """``win_rate/{ties_half,decisive,goal_decisive}_ci_{low,high}``: bootstrap over prompts of the
    protocol's win rates (sample j of A against sample j of B; a tie is equal utility, as in
    :func:`rlhfkit.worlds.protocol.compare_policies`). ``judge.judge(prompt, text)`` gives utility and goal."""
    per_prompt = {"ties_half": ([], []), "decisive": ([], []), "goal_decisive": ([], [])}
    for prompt, row_a, row_b in zip(prompts, texts_a, texts_b):
        wins = losses = ties = goal_wins = goal_losses = 0
        for a, b in zip(row_a, row_b):
            by_utility, by_goal = pair_outcome(judge.judge(prompt, a), judge.judge(prompt, b))
            wins, losses, ties = wins + (by_utility > 0), losses + (by_utility < 0), ties + (by_utility == 0)
            goal_wins, goal_losses = goal_wins + (by_goal > 0), goal_losses + (by_goal < 0)
        for name, (num, den) in (("ties_half", (wins + 0.5 * ties, wins + losses + ties)),
                                 ("decisive", (wins, wins + losses)),
                                 ("goal_decisive", (goal_wins, goal_wins + goal_losses))):
            per_prompt[name][0].append(num)
            per_prompt[name][1].append(den)
    out: dict[str, float | None] = {}
    for name, (nums, dens) in per_prompt.items():
        low, high = ratio_bootstrap_ci(nums, dens, n_bootstrap, seed, confidence)
        out[f"win_rate/{name}_ci_low"], out[f"win_rate/{name}_ci_high"] = low, high
    return out


# ----------------------------------------------------------------------------- formatting


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value) else None


def format_cell(metrics: Mapping[str, Any], key: str, kind: str) -> str:
    """One table cell: ``ci`` = value [low, high]; ``cap`` = value (cap); ``pct``; ``fN`` = N decimals."""
    value = _number(metrics.get(key))
    if value is None:
        return "—"
    if kind == "ci":
        low, high = _number(metrics.get(f"{key}_ci_low")), _number(metrics.get(f"{key}_ci_high"))
        sign = "+" if key.endswith("delta") else ""
        text = f"{value:{sign}.3f}"
        return f"{text} [{low:{sign}.3f}, {high:{sign}.3f}]" if low is not None and high is not None else text
    if kind == "cap":
        cap = _number(metrics.get(f"{key}_cap"))
        return f"{value:.3f} ({cap:.3f})" if cap is not None else f"{value:.3f}"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    return f"{value:.{int(kind[1:])}f}"


def _policy_rows(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    policies = report.get("policies", {})
    return [(plots.LABELS.get(name, name), [format_cell(policies[name], key, kind) for _, key, kind in TABLE_COLUMNS])
            for name in POLICY_ORDER if name in policies]


def _seconds(value: Any) -> str:
    value = _number(value)
    return "—" if value is None else (f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min")


def _facts(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The labelled facts under the table: data, labels, reward model, PPO, DPO, best-of-N."""
    labels, rm = report.get("labels", {}), report.get("reward_model", {})
    hacking, bon = report.get("hacking", {}), report.get("best_of_n", {})
    world = report.get("world", {})
    parameters = world.get("base_parameters")
    facts = [
        ("seed / preset", f"{report.get('seed')} / {report.get('preset')}"),
        ("base model", f"{parameters:,} parameters ({world.get('arch', '?')} {world.get('size', '?')})"
         if isinstance(parameters, int) else "—"),
        ("SFT samples → pairs", f"{labels.get('pairs', '—')} pairs from {labels.get('prompts', '—')} prompts; "
                                f"identical {labels.get('identical', '—')}, ties {labels.get('ties', '—')}, "
                                f"labelled {labels.get('labelled', '—')}"),
        ("annotators", f"τ = {format_cell(labels, 'tau', 'f3')}; disagreement on non-identical pairs of distinct "
                       f"utility {format_cell(labels, 'disagreement', 'pct')} (all non-identical: "
                       f"{format_cell(labels, 'disagreement_nonidentical', 'pct')}); agreement with gold "
                       f"{format_cell(labels, 'agreement_with_gold', 'pct')}"),
        ("reward model, held-out pairs", f"accuracy against gold {format_cell(rm, 'heldout_accuracy_vs_gold', 'pct')}"
                                         f" vs the annotators' own {format_cell(rm, 'annotator_accuracy_vs_gold', 'pct')}"
                                         f" on the same {rm.get('heldout_pairs_vs_gold', '—')} pairs; against the "
                                         f"labels {format_cell(rm, 'heldout_accuracy_vs_labels', 'pct')}"),
        ("best-of-N", f"N = {bon.get('n', '—')} by the reward model; KL = log N − (N−1)/N = "
                      f"{format_cell(bon, 'kl', 'f3')} nats"),
        ("reward-hacking monitor", hacking.get("verdict", "—")),
    ]
    return facts


def _instructgpt(report: Mapping[str, Any]) -> tuple[str, list[str], list[list[str]]] | None:
    """``(intro, header, rows)`` of the InstructGPT table, or None when the run has none."""
    section = report.get("instructgpt")
    if not section:
        return None
    small, big = section.get("small_parameters"), section.get("larger_parameters")
    intro = (f"Every small policy ({small:,} parameters) against an SFT-only model {section.get('size_ratio', 0):.1f}x "
             f"larger ({big:,} parameters), pretrained on the same base corpus and fine-tuned with the same SFT "
             "recipe; gold judge, the same eval prompts. The last row is the larger SFT model against the small SFT "
             "model: what size alone buys. (InstructGPT's headline: its 1.3B PPO model was preferred to the 175B "
             "models.)") if isinstance(small, int) and isinstance(big, int) else ""
    policies = section.get("policies", {})
    rows = [[label] + [format_cell(policies[name], key, kind) for _, key, kind in INSTRUCTGPT_COLUMNS]
            for name, label in INSTRUCTGPT_ROWS.items() if name in policies]
    return intro, ["policy"] + [c[0] for c in INSTRUCTGPT_COLUMNS], rows


# ----------------------------------------------------------------------------- markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(clean, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(clean, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Mapping[str, Any], plot_files: Mapping[str, str]) -> str:
    """``report.md``: the results table, the facts, the plots (as files), examples and stage times."""
    parts = [f"# rlhfkit demo — results against {report.get('baseline', 'sft').upper()}", "",
             "Every figure compares the policy with the SFT reference on the world's fixed held-out eval prompts, "
             "judged by the gold judge (docs/world.md §8). Headline: Δ utility with its interval and the goal-only "
             "decisive win rate, beside KL and the incoherent rate.", "",
             _md_table(["policy"] + [c[0] for c in TABLE_COLUMNS],
                       [[name] + cells for name, cells in _policy_rows(report)]), ""]
    parts += [f"- **{k}**: {v}" for k, v in _facts(report)] + [""]
    larger = _instructgpt(report)
    if larger:
        parts += ["## InstructGPT in miniature: against a larger SFT-only model", "", larger[0], "",
                  _md_table(larger[1], larger[2]), ""]
    for key, title in PLOT_TITLES.items():
        if key in plot_files:
            parts += [f"## {title}", "", f"![{title}]({plot_files[key]})", ""]
    examples = report.get("examples", [])
    if examples:
        names = [n for n in POLICY_ORDER if n in report.get("policies", {})]
        parts += ["## Sample responses (first sample of each policy, same prompts)", ""]
        rows = [[f"[{e['family']}] {e['prompt']}"] + [_example_text(e, n) for n in names] for e in examples]
        parts += [_md_table(["prompt"] + [plots.LABELS.get(n, n) for n in names], rows), ""]
    parts += ["## Stage times", "", _md_table(["stage", "time", "status"], _stage_rows(report)), ""]
    parts += [f"- {note}" for note in report.get("notes", [])]
    return "\n".join(parts) + "\n"


def _example_text(example: Mapping[str, Any], name: str) -> str:
    response = example.get("responses", {}).get(name)
    if not response:
        return "—"
    return f"{response['text']} ({response['behaviour']}, {response['utility']:+.2f})"


def _stage_rows(report: Mapping[str, Any]) -> list[list[str]]:
    rows = [[name, _seconds(info.get("seconds")), "reused" if info.get("reused") else "ran"]
            for name, info in report.get("stages", {}).items()]
    ran = sum(info.get("seconds") or 0.0 for info in report.get("stages", {}).values())
    rows.append(["all stages, as they ran", _seconds(ran), ""])
    rows.append(["this invocation", _seconds(report.get("total_seconds")), ""])
    return rows


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:4px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.name,th.name{text-align:left;font-weight:600}
table.examples td{text-align:left;max-width:260px;font-family:ui-monospace,Menlo,monospace;font-size:.95em}
.label{color:#666;font-size:.85em;font-family:system-ui,sans-serif}
.good{background:#eef8ee} .bad{background:#fbeeee}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
ul.facts li{margin:.2em 0} .note{color:#555;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "results") -> str:
    head = "".join(f'<th class="name">{_e(header[0])}</th>' if i == 0 else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="name">{_e(c)}</td>' if i == 0 else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _examples_html(report: Mapping[str, Any]) -> str:
    names = [n for n in POLICY_ORDER if n in report.get("policies", {})]
    rows = []
    for example in report.get("examples", []):
        cells = [f'<td><span class="label">[{_e(example["family"])}]</span> {_e(example["prompt"])}</td>']
        for name in names:
            response = example.get("responses", {}).get(name)
            if not response:
                cells.append("<td>—</td>")
                continue
            css = "good" if response["behaviour"] == "good" else "bad"
            cells.append(f'<td class="{css}">{_e(response["text"])}<br><span class="label">'
                         f'{_e(response["behaviour"])}, u = {response["utility"]:+.2f}</span></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_e(plots.LABELS.get(n, n))}</th>" for n in names)
    return f'<table class="examples"><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """``report.html``: self-contained (inline CSS, base64 PNGs), every piece of text escaped."""
    table = _html_table(["policy"] + [c[0] for c in TABLE_COLUMNS],
                        [[name] + cells for name, cells in _policy_rows(report)])
    facts = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in _facts(report))
    figures = "".join(
        f'<h2>{_e(PLOT_TITLES[key])}</h2><img alt="{_e(PLOT_TITLES[key])}" '
        f'src="data:image/png;base64,{base64.b64encode(images[key]).decode("ascii")}">'
        for key in PLOT_TITLES if key in images)
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.get("notes", []))
    larger = _instructgpt(report)
    larger_html = (f"<h2>InstructGPT in miniature: against a larger SFT-only model</h2><p class=\"note\">"
                   f"{_e(larger[0])}</p>{_html_table(larger[1], larger[2])}") if larger else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rlhfkit demo report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>rlhfkit demo — base, SFT, best-of-N, DPO and PPO against SFT</h1>
<p class="note">Gold judge on the world's fixed held-out eval prompts ({_e(report.get('eval_prompts', '?'))} prompts ×
{_e(report.get('eval_samples', '?'))} samples, temperature 1). Headline: Δ mean gold utility with its bootstrap
interval and the goal-only decisive win rate, beside KL(policy ‖ SFT) and the incoherent rate; the win rate with
ties counted half is capped by how good SFT already is (cap in brackets).</p>
<h2>Results</h2>
{table}
<ul class="facts">{facts}</ul>
{larger_html}
{figures}
<h2>Sample responses (first sample of each policy, same prompts)</h2>
{_examples_html(report)}
<h2>Stage times</h2>
{_html_table(["stage", "time", "status"], _stage_rows(report), "times")}
<h2>Notes</h2><ul class="note">{notes}</ul>
</body></html>
"""


# ----------------------------------------------------------------------------- writing


def make_plots(report: Mapping[str, Any], *, ppo_metrics: Sequence[Mapping[str, Any]] = (),
               rollout_gold: Sequence[Mapping[str, Any]] = (),
               checks: Sequence[Mapping[str, Any]] = ()) -> dict[str, bytes]:
    """Every plot that has data, by key of :data:`PLOT_TITLES`."""
    policies = {n: report["policies"][n] for n in POLICY_ORDER if n in report.get("policies", {})}
    best = report.get("hacking", {}).get("best_step")
    drawn = {
        "ppo_training": plots.ppo_training_curves(ppo_metrics, rollout_gold, checks),
        "gold_vs_proxy": plots.gold_vs_proxy(checks, rollout_gold, best),
        "behaviours": plots.behaviour_bars(policies),
        "win_rates": plots.win_rates({n: m for n, m in policies.items() if n != report.get("baseline", "sft")},
                                     report.get("baseline", "sft")),
    }
    return {k: v for k, v in drawn.items() if v is not None}


def json_ready(value: Any) -> Any:
    """Replace NaN/inf by None (JSON has no NaN), recursively; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_report(out_dir: str | Path, report: Mapping[str, Any], *, ppo_metrics: Sequence[Mapping[str, Any]] = (),
                 rollout_gold: Sequence[Mapping[str, Any]] = (),
                 checks: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.png`` in ``out_dir``."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    report = json_ready(report)
    images = make_plots(report, ppo_metrics=ppo_metrics, rollout_gold=rollout_gold, checks=checks)
    plot_files = {}
    for key, png in images.items():
        (out / "plots" / f"{key}.png").write_bytes(png)
        plot_files[key] = f"plots/{key}.png"
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    _write_text(paths["json"], json.dumps(report, indent=2, allow_nan=False) + "\n")
    _write_text(paths["md"], render_markdown(report, plot_files))
    _write_text(paths["html"], render_html(report, images))
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
