"""``rlhfkit label``: a judge labels response pairs into preference rows (RLAIF).

    rlhfkit label --judge ai --pairs pairs.jsonl --out prefs.jsonl
    rlhfkit label --judge lm:models/judge --pairs samples.jsonl --out prefs.jsonl
    rlhfkit label --judge reward:runs/reward/final --pairs pairs.jsonl --out prefs.jsonl

**Input**: JSON Lines, one pair per line, in either of two forms (so the same file can be imported into the
annotation app, and ``rlhfkit eval --save-samples`` output can be labelled as it is):

- ``{"prompt": ..., "responses": [a, b]}`` — the app's candidate format (exactly two responses);
- ``{"prompt": ..., "a": ..., "b": ...}``.

``prompt`` is text or a list of chat messages (the world's judges read text only); responses are non-empty
text. Other keys (``id``, ``sample``, ``kind``, ...) are ignored and counted. Every line is checked before
any judging; each problem is one sentence naming the file, line and field, and all are listed.

**Judges** (``--judge``): ``gold``, ``ai`` (the built-in world's, world prompts only), ``simulated`` (one of
the world's simulated annotators: ``--tau``, ``--annotator-seed``), ``reward:DIR`` (a reward model: the
higher normalised score wins) and ``lm:DIR`` (a local causal LM asked "A or B?", both orders: see
:mod:`rlhfkit.judges.lm_judge`).

**Output**: ``{"prompt", "chosen", "rejected"}`` rows (the library's preference format, loadable with
``rlhfkit.data.load_rows(path, "preference")``), written atomically. Identical pairs (whitespace aside) are
dropped without asking the judge, and ties / both-bad answers are dropped; all are counted. A manifest
(``OUT`` with the suffix ``.manifest.json``) records the judge, the counts, the input's and output's
SHA-256, and — when every prompt is a world prompt — how often the labels agree with the gold judge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data.formats import DataValidationError
from rlhfkit.data.sources import SourceError, Unreadable, open_source
from rlhfkit.data.validate import RowChecker, check_prompt, check_text, json_type
from rlhfkit.errors import UserError
from rlhfkit.judges.spec import LABEL_JUDGES, parse_judge_spec

PAIR_KEYS = frozenset({"prompt", "responses", "a", "b"})


@dataclass(frozen=True)
class PairRow:
    """One pair to label; ``origin`` is ``"FILE line N"``."""

    prompt: Any  # text or a list of Message
    a: str
    b: str
    origin: str


@dataclass
class LabelResult:
    """Preference rows and the count of every pair's fate."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    verdicts: list[str]  # per input pair: "a", "b", "tie", "both_bad" or "identical"
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading pairs


def _parse_pair(checker: RowChecker, obj: Any) -> PairRow | None:
    if not isinstance(obj, dict):
        checker.add(None, f"expected a JSON object, got {json_type(obj)}")
        return None
    prompt = check_prompt(checker, obj["prompt"], "prompt") if "prompt" in obj else None
    if "prompt" not in obj:
        checker.add("prompt", f"missing (the row has keys {', '.join(map(json.dumps, obj)) or 'none'})")
    if "responses" in obj and ("a" in obj or "b" in obj):
        checker.add(None, 'give either "responses": [a, b] or "a" and "b", not both')
        return None
    if "responses" in obj:
        value = obj["responses"]
        if not isinstance(value, list) or len(value) != 2:
            got = f"{len(value)} responses" if isinstance(value, list) else json_type(value)
            checker.add("responses", f"expected a list of exactly 2 responses, got {got}")
            return None
        texts = [check_text(checker, v, f"responses[{i}]") for i, v in enumerate(value)]
    elif "a" in obj or "b" in obj:
        texts = []
        for key in ("a", "b"):
            if key in obj:
                texts.append(check_text(checker, obj[key], key))
            else:
                checker.add(key, 'missing (give both "a" and "b")')
                texts.append(None)
    else:
        checker.add("responses", 'missing: give "responses": [a, b] or "a" and "b"')
        return None
    if checker.issues or prompt is None or None in texts:
        return None
    return PairRow(prompt, texts[0], texts[1], checker.where)


def read_pairs(path: str | Path) -> tuple[list[PairRow], dict[str, int]]:
    """Every pair of a JSON Lines file, validated (see the module docstring); ``(pairs, ignored keys)``.

    Raises :class:`~rlhfkit.data.DataValidationError` listing every problem (file, line, field), also for
    an empty file. Empty responses are errors: a judge cannot compare nothing.
    """
    display = str(path)
    try:
        records = list(open_source(path).records)  # JSON Lines, or any file kind load_rows reads
    except SourceError as exc:
        raise DataValidationError([exc.sentence], display, "nothing was labelled") from None
    problems: list[str] = []
    pairs: list[PairRow] = []
    ignored: Counter[str] = Counter()
    for where, obj in records:
        if isinstance(obj, Unreadable):
            problems.append(obj.sentence)
            continue
        checker = RowChecker(where)
        pair = _parse_pair(checker, obj)
        problems.extend(sentence for _, sentence in checker.issues)
        if pair is not None:
            pairs.append(pair)
        if isinstance(obj, dict):
            ignored.update(k for k in obj if k not in PAIR_KEYS)
    if not records and not problems:
        problems.append(f"{display}: no pairs (an empty file).")
    if problems:
        raise DataValidationError(problems, display, "nothing was labelled")
    return pairs, dict(ignored)


def check_world_prompts(judge: Any, pairs: Sequence[PairRow], source: str) -> None:
    """Judges that read only the world's prompts (``knows``) get only those; else a list of the lines."""
    knows = getattr(judge, "knows", None)
    if knows is None:
        return
    problems = [f'{p.origin}, field "prompt": not a prompt of the built-in world; the {judge.name} judge reads '
                "only world prompts (use reward:DIR or lm:DIR for your own)." for p in pairs if not knows(p.prompt)]
    if problems:
        raise DataValidationError(problems, source, "nothing was labelled")


# ---------------------------------------------------------------------------------------------- judging


def make_label_judge(spec: str, *, world_seed: int = 0, batch_size: int = 32, tau: float | None = None,
                     annotator_seed: int = 1):
    """The judge named ``spec`` (:data:`LABEL_JUDGES`); ``simulated`` here, the rest through
    :func:`rlhfkit.judges.make_judge`."""
    from rlhfkit.judges import make_judge

    if parse_judge_spec(spec, LABEL_JUDGES).kind == "simulated":
        from rlhfkit.judges.simulated import DEFAULT_TAU, SimulatedAnnotatorJudge

        return SimulatedAnnotatorJudge(world_seed=world_seed, tau=DEFAULT_TAU if tau is None else tau,
                                       seed=annotator_seed)
    return make_judge(spec, world_seed=world_seed, batch_size=batch_size, valid=LABEL_JUDGES)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def judge_pairs(judge: Any, prompts: Sequence[Any], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[str]:
    """A verdict per pair — ``"a"``, ``"b"``, ``"tie"`` or ``"both_bad"`` — asked the cheapest way the judge
    allows: ``compare_batch`` (LM judge), ``answer`` (simulated annotators, who may say both bad), scores in
    one ``score_batch`` call for a reward model, else ``compare`` one pair at a time."""
    if callable(getattr(judge, "compare_batch", None)):
        return list(judge.compare_batch(prompts, responses_a, responses_b))
    if callable(getattr(judge, "answer", None)):
        return [judge.answer(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
    if type(judge).__name__ == "RewardModelJudge":  # its compare is score-and-outcome: batch the scores
        from rlhfkit.judges.base import outcome, score_all

        scores = score_all(judge, list(prompts) * 2, list(responses_a) + list(responses_b))
        n = len(prompts)
        return [outcome(scores[i], scores[n + i], judge.tie_margin) for i in range(n)]
    return [judge.compare(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]


def label(judge: Any, pairs: Sequence[PairRow]) -> LabelResult:
    """Judge every non-identical pair and keep the decisive ones as ``{"prompt", "chosen", "rejected"}``."""
    from rlhfkit.data.rows import PreferenceRow, row_to_dict

    asked = [i for i, p in enumerate(pairs) if not _same_text(p.a, p.b)]
    found = judge_pairs(judge, [pairs[i].prompt for i in asked], [pairs[i].a for i in asked],
                        [pairs[i].b for i in asked]) if asked else []
    verdicts = ["identical"] * len(pairs)
    for i, verdict in zip(asked, found):
        if verdict not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"the judge answered {verdict!r} for {pairs[i].origin}; expected a, b, tie or both_bad")
        verdicts[i] = verdict
    rows = []
    for pair, verdict in zip(pairs, verdicts):
        if verdict in ("a", "b"):
            chosen, rejected = (pair.a, pair.b) if verdict == "a" else (pair.b, pair.a)
            rows.append(row_to_dict(PreferenceRow(pair.prompt, chosen, rejected, pair.origin)))
    tally = Counter(verdicts)
    counts = {"pairs": len(pairs), "labelled": len(rows), "chose_a": tally["a"], "chose_b": tally["b"],
              "ties": tally["tie"], "both_bad": tally["both_bad"], "identical": tally["identical"]}
    return LabelResult(rows, counts, verdicts)


def gold_agreement(pairs: Sequence[PairRow], verdicts: Sequence[str], world_seed: int = 0) -> dict[str, Any] | None:
    """How the verdicts compare with the built-in world's gold judge, when every prompt is a world prompt.

    On pairs whose gold utilities differ by more than 0.05 (the annotators' tie margin):
    ``agreement`` = share of verdicts naming the gold-better response (a tie or both-bad counts as not
    agreeing, as in :func:`rlhfkit.worlds.agreement_with_gold`), ``decisive_agreement`` = the same among
    decisive verdicts only. None when some prompt is not a world prompt.
    """
    from rlhfkit.worlds import GoldJudge, World

    world = World.build(world_seed)
    if not all(isinstance(p.prompt, str) and world.find(p.prompt) is not None for p in pairs):
        return None
    gold = GoldJudge(world)
    n = agree = decisive = decisive_agree = 0
    for pair, verdict in zip(pairs, verdicts):
        if verdict == "identical" or abs(gold.score(pair.prompt, pair.a) - gold.score(pair.prompt, pair.b)) <= 0.05:
            continue
        truth = gold.compare(pair.prompt, pair.a, pair.b)
        n += 1
        agree += verdict == truth
        if verdict in ("a", "b"):
            decisive += 1
            decisive_agree += verdict == truth
    return {"pairs_with_gold_preference": n, "agreement": agree / n if n else None,
            "decisive_agreement": decisive_agree / decisive if decisive else None}


# ---------------------------------------------------------------------------------------------- the command


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".manifest.json")


def label_file(pairs_path: str | Path, out: str | Path, judge: Any, *, world_seed: int = 0,
               pairs: tuple[list[PairRow], dict[str, int]] | None = None) -> dict[str, Any]:
    """Read and validate ``pairs_path`` (unless ``pairs`` = :func:`read_pairs`'s result is given), judge, and
    write ``out``; returns the manifest (also written beside ``out``, last)."""
    from rlhfkit.data import write_rows

    started = time.perf_counter()
    pairs, ignored = pairs if pairs is not None else read_pairs(pairs_path)
    check_world_prompts(judge, pairs, str(pairs_path))
    result = label(judge, pairs)
    if not result.rows:
        raise UserError(f"{pairs_path}: the judge preferred neither response in any of the {len(pairs)} pairs "
                        f"({result.counts['ties']} ties, {result.counts['both_bad']} both bad, "
                        f"{result.counts['identical']} identical); nothing was written.")
    write_rows(out, result.rows)
    manifest = {
        "judge": str(getattr(judge, "name", type(judge).__name__)),
        "input": {"path": str(pairs_path), "sha256": sha256_of(pairs_path), "ignored_keys": ignored},
        "output": {"path": str(out), "rows": len(result.rows), "sha256": sha256_of(out)},
        "counts": result.counts,
        "gold": gold_agreement(pairs, result.verdicts, world_seed),
        "seconds": round(time.perf_counter() - started, 2),
    }
    tmp = manifest_path(out).with_name(manifest_path(out).name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest_path(out))
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
    c = manifest["counts"]
    lines = [f"label: {c['pairs']} pairs judged by {manifest['judge']} in {manifest['seconds']} s",
             f"  labelled      {c['labelled']:>7}   (chose the first response {c['chose_a']}, the second {c['chose_b']})",
             f"  dropped       {c['pairs'] - c['labelled']:>7}   (ties {c['ties']}, both bad {c['both_bad']}, "
             f"identical {c['identical']})"]
    gold = manifest.get("gold")
    if gold and gold["agreement"] is not None:
        decisive = gold["decisive_agreement"]
        lines.append(f"  gold agreement {gold['agreement']:.3f} on {gold['pairs_with_gold_preference']} pairs of "
                     f"distinct gold utility ({'—' if decisive is None else f'{decisive:.3f}'} among decisive labels)")
    lines.append(f"  wrote {manifest['output']['path']} and {manifest_path(manifest['output']['path'])}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", required=True, help="gold | ai | simulated | reward:DIR | lm:DIR")
    parser.add_argument("--pairs", required=True, help='JSON Lines of {"prompt", "responses": [a, b]} or '
                        '{"prompt", "a", "b"}')
    parser.add_argument("--out", required=True, help='preference rows {"prompt", "chosen", "rejected"}')
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world (default: 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward for reward/lm judges")
    parser.add_argument("--tau", type=float, help="simulated judge: annotator noise τ (default 0.5)")
    parser.add_argument("--annotator-seed", type=int, default=1, help="simulated judge: which annotator")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for reward/lm judges")


def main(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.tau is not None and not args.tau > 0:
        raise UserError(f"--tau must be positive, got {args.tau}.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = read_pairs(args.pairs)  # bad rows are reported before a model is loaded
    judge = make_label_judge(args.judge, world_seed=args.world_seed, batch_size=args.batch_size, tau=args.tau,
                             annotator_seed=args.annotator_seed)
    manifest = label_file(args.pairs, args.out, judge, world_seed=args.world_seed, pairs=pairs)
    print(format_summary(manifest), file=sys.stdout)
    return 0
