"""The report (rlhfkit/evaluate/report.py, plots.py): intervals, cells, escaping, self-contained HTML, strict JSON."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

from rlhfkit.evaluate import plots
from rlhfkit.evaluate.report import (
    POLICY_ORDER,
    TABLE_COLUMNS,
    format_cell,
    json_ready,
    ratio_bootstrap_ci,
    render_html,
    render_markdown,
    win_rate_intervals,
    write_report,
)
from rlhfkit.judges import GoldJudge
from rlhfkit.worlds import World
from rlhfkit.worlds.protocol import compare_policies

PNG = b"\x89PNG\r\n\x1a\n"


def policy_metrics(delta: float, kl: float | None = 1.0) -> dict:
    return {"gold/utility_delta": delta, "gold/utility_delta_ci_low": delta - 0.1,
            "gold/utility_delta_ci_high": delta + 0.1, "gold/utility_a": 0.3 + delta,
            "win_rate/goal_decisive": 0.5 + delta / 2, "win_rate/goal_decisive_ci_low": 0.4,
            "win_rate/goal_decisive_ci_high": 0.7, "win_rate/decisive": 0.5 + delta / 2,
            "win_rate/ties_half": 0.5 + delta / 4, "win_rate/ties_half_cap": 0.66, "pairs/tie_fraction": 0.4,
            "pairs/identical_fraction": 0.2, "kl/nats_per_seq": kl, "rates/a/incoherent": 0.1,
            "rates/a/helpful_correct": 0.5, "rates/a/harmful_compliance": 0.05, "rates/a/over_refusal": 0.04,
            "rates/a/confabulation": 0.2, "rates/a/sycophantic_agreement": 0.1, "rates/a/wrong": 0.3,
            "length/a/mean_words": 6.5}


def sample_report(evil: str = "<script>alert('x')</script> & <b>bold</b>") -> dict:
    policies = {name: policy_metrics(d) for name, d in zip(POLICY_ORDER, (-0.3, 0.0, 0.1, 0.15, 0.2))}
    policies["sft"]["kl/nats_per_seq"] = 0.0
    return {
        "seed": 3, "preset": "quick", "baseline": "sft", "eval_prompts": 10, "eval_samples": 2,
        "policies": policies, "world": {"base_parameters": 53408, "arch": "llama", "size": "micro"},
        "labels": {"tau": 0.4, "disagreement": 0.25, "agreement_with_gold": 0.85, "pairs": 100, "labelled": 70},
        "reward_model": {"heldout_accuracy_vs_gold": 0.7, "annotator_accuracy_vs_gold": 0.84,
                         "heldout_pairs_vs_gold": 50},
        "best_of_n": {"n": 4, "kl": math.log(4) - 3 / 4}, "hacking": {"verdict": "no divergence", "best_step": 4},
        "stages": {"world": {"seconds": 27.0, "reused": False}, "sft": {"seconds": 1.5, "reused": True}},
        "total_seconds": 30.0,
        "examples": [{"prompt": "what is 1 plus 1? <i>", "family": "helpful",
                      "responses": {n: {"text": evil, "behaviour": "incoherent", "utility": -1.0}
                                    for n in POLICY_ORDER}}],
        "notes": ["a note with <angle> brackets"],
    }


def test_ratio_bootstrap_interval_limits():
    low, high = ratio_bootstrap_ci([1, 2, 3], [2, 4, 6], n_bootstrap=200)  # every prompt has ratio 1/2
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    nums, dens = [1, 0, 1, 1, 0, 1, 1, 0], [1] * 8
    low, high = ratio_bootstrap_ci(nums, dens, n_bootstrap=500, seed=1)
    assert low < 5 / 8 < high and low >= 0 and high <= 1
    assert ratio_bootstrap_ci(nums, dens, n_bootstrap=500, seed=1) == (low, high)  # deterministic in seed
    assert ratio_bootstrap_ci([0, 0], [0, 0]) == (None, None)  # no decisive pair anywhere
    assert ratio_bootstrap_ci([], []) == (None, None)


def test_win_rate_intervals_bracket_the_protocols_point_estimates():
    world = World.build(0)
    gold = GoldJudge(world)
    prompts = [p for p in world.prompts("eval", "helpful") if p.kind == "arithmetic"][:12]
    good = [[f"the answer is {p.answer}.", f"it is {p.answer}."] for p in prompts]
    mixed = [[f"the answer is {p.answer}." if i % 3 else "i do not know.", "i do not know."]
             for i, p in enumerate(prompts)]
    figures = compare_policies(gold, prompts, good, mixed, n_bootstrap=200)
    intervals = win_rate_intervals(gold, prompts, good, mixed, n_bootstrap=300)
    for name in ("ties_half", "decisive", "goal_decisive"):
        point = figures[f"win_rate/{name}"]
        assert intervals[f"win_rate/{name}_ci_low"] <= point <= intervals[f"win_rate/{name}_ci_high"]
    assert intervals["win_rate/decisive_ci_low"] == 1.0  # A never loses: every resample gives 1
    assert intervals["win_rate/ties_half_ci_low"] < figures["win_rate/ties_half"]  # ties vary by prompt


def test_cells_format_intervals_caps_percentages_and_missing_values():
    m = policy_metrics(0.1234)
    assert format_cell(m, "gold/utility_delta", "ci") == "+0.123 [+0.023, +0.223]"
    assert format_cell(m, "win_rate/goal_decisive", "ci") == "0.562 [0.400, 0.700]"
    assert format_cell(m, "win_rate/ties_half", "cap") == "0.531 (0.660)"
    assert format_cell(m, "pairs/tie_fraction", "pct") == "40.0 %"
    assert format_cell(m, "kl/nats_per_seq", "f2") == "1.00"
    assert format_cell({"x": None}, "x", "f2") == "—"
    assert format_cell({"x": float("nan")}, "x", "pct") == "—"
    assert format_cell({}, "absent", "ci") == "—"


def test_html_escapes_model_output_and_embeds_every_plot():
    report = sample_report()
    images = {"behaviours": plots.behaviour_bars(report["policies"]),
              "win_rates": plots.win_rates({n: m for n, m in report["policies"].items() if n != "sft"})}
    page = render_html(report, images)
    assert "<script" not in page and "<b>bold" not in page and "<angle>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    rows = re.findall(r'<tr><td class="name">([^<]+)</td>', page.split('class="results"')[1].split("</table>")[0])
    assert rows == ["base", "SFT", "best-of-N", "DPO", "PPO"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 2 and all(base64.b64decode(e).startswith(PNG) for e in embedded)
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched


def test_markdown_has_the_table_and_escapes_pipes():
    report = sample_report(evil="a | b")
    text = render_markdown(report, {"behaviours": "plots/behaviours.png"})
    assert text.count("\n| ") >= 5 + 1  # the header and one row per policy (+ examples, stage times)
    assert "| PPO | +0.200 [+0.100, +0.300] |" in text
    assert "a \\| b" in text and "![" in text


def test_write_report_writes_strict_json_md_html_and_pngs(tmp_path):
    report = sample_report()
    report["policies"]["dpo"]["kl/nats_per_seq"] = float("nan")
    metrics = [{"step": s, "objective/rm_score": 0.1 * s, "objective/kl": 0.2 * s} for s in range(1, 6)]
    rollout = [{"step": s, "proxy": 0.1 * s, "gold": 0.5 - 0.05 * s, "kl": 0.2 * s} for s in range(1, 6)]
    checks = [{"step": s, "proxy": 0.1 * s, "judge": 0.5 - 0.05 * s, "kl": 0.2 * s} for s in (2, 4)]
    paths = write_report(tmp_path, report, ppo_metrics=metrics, rollout_gold=rollout, checks=checks)
    loaded = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded["policies"]["dpo"]["kl/nats_per_seq"] is None
    assert set(loaded["policies"]) == set(POLICY_ORDER)
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["behaviours.png", "gold_vs_proxy.png", "ppo_training.png", "win_rates.png"]
    assert all((tmp_path / "plots" / p).read_bytes().startswith(PNG) for p in pngs)
    page = paths["html"].read_text()
    header = page.split('class="results"')[1].split("</thead>")[0]
    assert page.count("data:image/png;base64,") == 4 and len(re.findall(r"<th[ >]", header)) == len(TABLE_COLUMNS) + 1


def test_plots_return_none_without_data_and_png_with_it():
    assert plots.ppo_training_curves([]) is None
    assert plots.gold_vs_proxy([], []) is None
    assert plots.behaviour_bars({}) is None
    assert plots.win_rates({}) is None
    assert plots.gold_vs_proxy([{"step": 1, "kl": 0.5, "proxy": 0.1, "judge": 0.3}], best_step=1).startswith(PNG)


def test_json_ready_replaces_non_finite_numbers_recursively():
    assert json_ready({"a": [1.0, float("inf"), (2, float("nan"))], "b": {"c": -float("inf")}}) == {
        "a": [1.0, None, [2, None]], "b": {"c": None}}
