"""``rlhfkit eval``: a policy against a baseline, judged, with KL — a compact table and a JSON report.

    rlhfkit eval --policy runs/ppo --baseline runs/sft --judge gold --out report.json
    rlhfkit eval --policy A --baseline B --judge reward:runs/rm --prompts my_prompts.jsonl
    rlhfkit eval --policy A --baseline B --judge lm:models/judge --prompts my_prompts.jsonl

Without ``--prompts`` the built-in world's fixed eval prompts are used (100 per family; ``--limit N``
keeps the first N of each family, for quick checks only) and the world's protocol is reported with the
gold judge's figures whatever ``--judge`` is (the world knows the truth; ``--judge`` adds the ``judge/*``
figures of that judge). With ``--prompts FILE`` (``{"prompt"}`` rows) the evaluation works outside the
world: a reward-model or LM judge's figures only — behaviour rates need the world. ``lm:DIR`` compares
each pair as ``rlhfkit label`` does (both orders, :mod:`rlhfkit.judges.lm_judge`): its ``judge/score_delta``
is the mean margin of A over B, with no score of each side. Policies may be model
folders or PEFT adapter folders. With ``--environment module:factory`` each response is a multi-turn episode
(tool calls and their observations, docs/tools.md), judged on its whole text; KL sums over the model's tokens
only. Figures and keys: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.judges import GoldJudge, make_judge
from rlhfkit.worlds import FAMILIES, World
from rlhfkit.worlds.protocol import RATES

NO_WORLD_NOTE = ("behaviour rates (harmful compliance, over-refusal, confabulation, sycophancy, wrong, "
                 "incoherent) need the built-in world's gold judge: run without --prompts to evaluate on the "
                 "world's eval prompts")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="policy A: a model folder or a PEFT adapter folder")
    parser.add_argument("--baseline", required=True, help="baseline B (usually the SFT reference)")
    parser.add_argument("--judge", default="gold", help="gold | ai | reward:DIR | lm:DIR (default: gold)")
    parser.add_argument("--prompts", help='JSON Lines file of {"prompt"} rows (default: the world\'s eval prompts)')
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt and policy (default: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="response length limit (default: 48)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default: 0)")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world (default: 0)")
    parser.add_argument("--limit", type=int, help="first N world eval prompts per family (or N prompts of "
                        "--prompts); for quick checks, never for reported figures")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per generation batch (default: 64; "
                        "samples depend on it, keep it fixed across runs)")
    parser.add_argument("--kl-batch-size", type=int, default=16, help="rows per KL forward (default: 16)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice; 1 is "
                        "often faster for tiny models on a busy machine)")
    parser.add_argument("--no-kl", action="store_true", help="skip KL (needed when the tokenizers differ)")
    parser.add_argument("--environment", help="module:factory or path.py:factory of an environment "
                        "(docs/tools.md): responses are multi-turn episodes with tools, judged on their whole text")
    parser.add_argument("--max-turns", type=int, default=4, help="with --environment: model turns per episode "
                        "(default: 4); --max-new-tokens counts the model's tokens of the whole episode")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--save-samples", help="write every (prompt, a, b) sample pair here as JSON Lines")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("samples", "max_new_tokens", "batch_size", "kl_batch_size", "n_bootstrap", "max_turns"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}.")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1, got {args.confidence}.")


def _user_prompts(args: argparse.Namespace, judge) -> list:
    from rlhfkit.data import load_rows

    rows = load_rows(args.prompts, "prompt").rows[: args.limit]
    knows = getattr(judge, "knows", None)
    if knows is not None:  # the world's judges read only world prompts
        for row in rows:
            if not knows(row.prompt):
                raise UserError(f"{row.origin}: {str(row.prompt)[:60]!r} is not a prompt of the built-in world "
                                f"(seed {args.world_seed}); the {judge.name} judge reads only world prompts — "
                                "use --judge reward:DIR or lm:DIR for your own prompts.")
    return [row.prompt for row in rows]


def choose_prompts(args: argparse.Namespace, judge) -> tuple[list, object | None, str]:
    """``(prompts, gold judge or None, description)`` for the run (see the module docstring)."""
    if args.prompts:
        prompts = _user_prompts(args, judge)
        gold = judge if isinstance(judge, GoldJudge) else (GoldJudge(judge.world) if hasattr(judge, "world")
                                                            else None)
        return prompts, gold, f"{args.prompts} ({len(prompts)} prompts)"
    world = getattr(judge, "world", None) or World.build(args.world_seed)
    prompts = [p.text for family in FAMILIES for p in world.prompts("eval", family)[: args.limit]]
    gold = judge if isinstance(judge, GoldJudge) else GoldJudge(world)
    limited = f", first {args.limit} per family" if args.limit else ""
    return prompts, gold, f"built-in world eval prompts (seed {args.world_seed}{limited}: {len(prompts)} prompts)"


def _load_policy(path: str):
    from rlhfkit.models import load_causal_lm, load_tokenizer

    return load_causal_lm(path), load_tokenizer(path)


def main(args: argparse.Namespace) -> int:
    from rlhfkit.evaluate.kl import check_same_tokenizer
    from rlhfkit.evaluate.protocol import evaluate_policy_pair
    from rlhfkit.evaluate.sampling import sample_policy, stream_seed

    _check_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    episodes = {}
    if args.environment:  # both policies play the same environment; a bad path fails before any model loads
        from rlhfkit.envs import load_environment

        episodes = {"environment": load_environment(args.environment, "--environment"), "max_turns": args.max_turns}
    judge = make_judge(args.judge, world_seed=args.world_seed, batch_size=args.batch_size)
    prompts, gold, source = choose_prompts(args, judge)
    policy, policy_tokenizer = _load_policy(args.policy)
    baseline, baseline_tokenizer = _load_policy(args.baseline)
    if not args.no_kl:
        check_same_tokenizer(policy_tokenizer, baseline_tokenizer, ("policy", "baseline"))
    n = len(prompts) * args.samples
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **episodes)
    _progress(f"sampling {n} responses from the policy ({args.policy})")
    samples_a = sample_policy(policy, policy_tokenizer, prompts, args.samples,
                              seed=stream_seed(args.seed, "policy"), **common)
    _progress(f"sampling {n} responses from the baseline ({args.baseline})")
    samples_b = sample_policy(baseline, baseline_tokenizer, prompts, args.samples,
                              seed=stream_seed(args.seed, "baseline"), **common)
    _progress(f"judging ({judge.name})" + ("" if args.no_kl else " and estimating KL(policy ‖ baseline)"))
    metrics = evaluate_policy_pair(policy, baseline, policy_tokenizer, judge, prompts, args.samples, args.seed,
                                   policy_samples=samples_a, baseline_samples=samples_b,
                                   baseline_tokenizer=baseline_tokenizer, gold=gold, compute_kl=not args.no_kl,
                                   kl_batch_size=args.kl_batch_size, n_bootstrap=args.n_bootstrap,
                                   confidence=args.confidence)
    notes = [] if gold is not None else [NO_WORLD_NOTE]
    if args.no_kl:
        notes.append("KL not computed (--no-kl)")
    settings = {"policy": args.policy, "baseline": args.baseline, "judge": judge.name, "prompts": source,
                "samples": args.samples, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                "seed": args.seed, "world_seed": args.world_seed, "limit": args.limit,
                "batch_size": args.batch_size, "n_bootstrap": args.n_bootstrap, "confidence": args.confidence,
                "environment": args.environment, "max_turns": args.max_turns if args.environment else None}
    print(format_table(metrics, settings, notes))
    if args.out:
        write_json(args.out, {"metrics": metrics, "settings": settings, "notes": notes})
        _progress(f"wrote {args.out}")
    if args.save_samples:
        _write_samples(args.save_samples, samples_a, samples_b)
        _progress(f"wrote {args.save_samples}")
    return 0


def _progress(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def json_safe(value):
    """Non-finite floats become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, report: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=2, sort_keys=False, allow_nan=False) + "\n")
    return out


def _write_samples(path: str | Path, samples_a, samples_b) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for prompt, texts_a, texts_b in zip(samples_a.prompts, samples_a.texts, samples_b.texts):
            for j, (a, b) in enumerate(zip(texts_a, texts_b)):
                fh.write(json.dumps({"prompt": prompt if isinstance(prompt, str) else str(prompt), "sample": j,
                                     "a": a, "b": b}) + "\n")


# ---- the human table ---------------------------------------------------------------------------------------


W = 36  # the label column's least width; a longer label (a judge named by its path) widens it for all rows


def _f(value, signed: bool = False, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _line(label: str, text: str) -> tuple[str, str]:
    return label, text


def _ab_row(label: str, a, b, delta=None, low=None, high=None) -> tuple[str, str]:
    interval = f"[{_f(low, True)}, {_f(high, True)}]" if low is not None else ""
    delta_text = _f(delta, True) if delta is not None else ""
    return label, f"{_f(a):>9}{_f(b):>9}{delta_text:>10}  {interval}".rstrip()


def _render(rows: list[tuple[str, str] | str]) -> list[str]:
    """``(label, figures)`` rows with one label column wide enough for the longest label (two spaces
    before the figures at least), so the figures line up and never touch a label; strings pass as they are."""
    width = max([W] + [len(row[0]) + 2 for row in rows if isinstance(row, tuple)])
    return [row if isinstance(row, str) else f"  {row[0]:<{width}}{row[1]}".rstrip() for row in rows]


def format_table(metrics: dict, settings: dict, notes: list[str]) -> str:
    """The compact human summary printed by ``rlhfkit eval``."""
    m = metrics
    level = round(100 * settings.get("confidence", 0.95))
    header = [f"policy A = {settings['policy']}   baseline B = {settings['baseline']}",
              f"judge {settings['judge']}; {settings['prompts']}; {settings['samples']} samples per prompt", ""]
    if settings.get("environment"):
        header.insert(2, f"episodes in {settings['environment']} (at most {settings['max_turns']} model turns)")
    lines: list[tuple[str, str] | str] = [("", f"{'A':>9}{'B':>9}{'A − B':>10}  {level}% CI")]
    if "gold/utility_delta" in m:
        lines.append(_ab_row("gold utility", m["gold/utility_a"], m["gold/utility_b"], m["gold/utility_delta"],
                             m["gold/utility_delta_ci_low"], m["gold/utility_delta_ci_high"]))
        lines.append(_ab_row("gold goal term", m["gold/goal_a"], m["gold/goal_b"], m["gold/goal_delta"]))
    if "gold/utility_delta" not in m or m.get("judge/name") != "gold":
        pairwise = m.get("judge/score_a") is None  # the LM judge: a margin of A over B, no score of each
        lines.append(_ab_row(f"{m['judge/name']} {'margin' if pairwise else 'score'}", m.get("judge/score_a"),
                             m.get("judge/score_b"), m["judge/score_delta"], m["judge/score_delta_ci_low"],
                             m["judge/score_delta_ci_high"]))
    lines.append("")
    if "win_rate/ties_half" in m:
        lines += [_line("win rate, ties half (gold)",
                        f"{_f(m['win_rate/ties_half'])}   (at most {_f(m['win_rate/ties_half_cap'])} here)"),
                  _line("decisive win rate (gold)", _f(m["win_rate/decisive"])),
                  _line("goal-only decisive win rate (gold)", _f(m["win_rate/goal_decisive"])),
                  _line("ties / identical (gold)",
                        f"{_f(m['pairs/tie_fraction'])} / {_f(m['pairs/identical_fraction'])}")]
    if m.get("judge/name") != "gold":
        name = m["judge/name"]
        lines += [_line(f"win rate, ties half ({name})", _f(m["judge/win_rate/ties_half"])),
                  _line(f"decisive win rate ({name})", _f(m["judge/win_rate/decisive"])),
                  _line(f"ties / identical ({name})",
                        f"{_f(m['judge/pairs/tie_fraction'])} / {_f(m['pairs/identical_fraction'])}")]
    lines.append("")
    if "rates/a/incoherent" in m:
        lines.append(("behaviour rate (among family)", f"{'A':>9}{'B':>9}"))
        for name, (family, _) in RATES.items():
            lines.append((f"{name} ({family or 'all'})", f"{_f(m[f'rates/a/{name}']):>9}{_f(m[f'rates/b/{name}']):>9}"))
    for unit in ("words", "tokens"):
        if f"length/a/mean_{unit}" in m:
            lines.append((f"mean {unit}", f"{_f(m[f'length/a/mean_{unit}'], digits=1):>9}"
                                          f"{_f(m.get(f'length/b/mean_{unit}'), digits=1):>9}"))
    if m.get("kl/nats_per_seq") is not None:
        kl = f"{_f(m['kl/nats_per_seq'], digits=4)} ± {_f(m.get('kl/nats_per_seq_stderr'), digits=4)}"
        if "kl/k1_nats_per_seq" in m:
            kl += (f"   (k1 estimate {_f(m['kl/k1_nats_per_seq'], digits=4)} ± "
                   f"{_f(m['kl/k1_nats_per_seq_stderr'], digits=4)})")
        lines.append(_line("KL(A ‖ B), nats per sequence", kl))
    lines += [f"  note: {note}" for note in notes]
    return "\n".join(header + _render(lines))
