"""Inspection commands: ``rlhfkit world show``, ``judge``, ``candidates``, ``chat-data`` (the CLI wires them)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlhfkit.errors import UserError

from . import behaviours as bh
from .judge import GoldJudge
from .prompts import World
from .protocol import policy_stats
from .responses import generate_response


def show(seed: int = 0, n: int = 2, tools: bool = False) -> None:
    """Print ``n`` eval prompts per family, each with one gold-judged response per behaviour; with ``tools``,
    also responses that call the calculator first (``calc: 7 plus 5 = 12.``, the tool world)."""
    world = World.build(seed)
    judge = GoldJudge(world)
    a = world.almanac
    print(f"built-in world, seed {seed}: {len(a.lands)} lands and {len(a.people)} people "
          f"({len(a.facts())} facts); {len(world.train_prompts)} train prompts, "
          f"{len(world.eval_prompts)} eval prompts; vocabulary {len(world.vocabulary())} words")
    rng = random.Random(f"show-{seed}")
    for family in bh.FAMILIES:
        print(f"\n== {family}")
        for prompt in world.prompts("eval", family)[:n]:
            print(f"prompt: {prompt.text}")
            for behaviour in bh.FAMILY_BEHAVIOURS[family]:
                response = generate_response(prompt, behaviour, rng)
                j = judge.judge(prompt, response)
                print(f"  u={j.utility:+.2f} {j.behaviour:22s} {response}")
        style_prompt = world.prompts("eval", family)[0]
        for style in ("rude", "rambling"):
            response = generate_response(style_prompt, "good", rng, style)
            j = judge.judge(style_prompt, response)
            print(f"  u={j.utility:+.2f} {j.behaviour + ' (' + style + ')':22s} {response}")
        if tools:
            for prompt in world.prompts("eval", family)[:n]:
                for behaviour in ("good", "wrong") if "wrong" in bh.FAMILY_BEHAVIOURS[family] else ("good",):
                    response = generate_response(prompt, behaviour, rng, tool=True)
                    j = judge.judge(prompt, response)
                    label = f"{j.behaviour} ({'needless ' if j.needless_tool else ''}tool)"
                    print(f"  u={j.utility:+.2f} {label:22s} {response}")


def judge_file(path: str | Path, out_path: str | Path | None = None, seed: int = 0) -> dict:
    """Score a JSON Lines file of ``{"prompt", "response"}`` rows with the gold judge.

    Prints the behaviour rates; writes each row with ``family``, ``behaviour``, ``goal`` and
    ``utility`` added to ``out_path`` when given (rows whose prompt is not a world prompt get
    ``"behaviour": null``). Returns the summary (``counts/rows``, ``counts/unknown_prompt``,
    then the keys of ``protocol.policy_stats``).
    """
    world = World.build(seed)
    judge = GoldJudge(world)
    rows, prompts, responses, unknown = [], [], [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {line_no}: not valid JSON ({e.msg}).") from None
            for key in ("prompt", "response"):
                if not isinstance(row.get(key) if isinstance(row, dict) else None, str):
                    raise UserError(f"{path} line {line_no}, field \"{key}\": missing or not a string.")
            prompt = world.find(row["prompt"])
            if prompt is None:
                unknown += 1
                row.update(family=None, behaviour=None, goal=None, utility=None)
            else:
                j = judge.judge(prompt, row["response"])
                row.update(family=j.family, behaviour=j.behaviour, goal=j.goal, utility=j.utility)
                prompts.append(prompt)
                responses.append([row["response"]])
            rows.append(row)
    summary = {"counts/rows": len(rows), "counts/unknown_prompt": unknown}
    summary.update(policy_stats(judge, prompts, responses))
    if out_path is not None:
        with open(out_path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    for key, value in summary.items():
        if not key.startswith("behaviours/"):
            print(f"{key:32s} {value if value is None or isinstance(value, int) else f'{value:.3f}'}")
    return summary


def configure(parser) -> None:
    """``rlhfkit world build|show|judge``."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="train the tokenizer and pretrain the tiny base model (cached)")
    build.add_argument("--out", default="runs/world",
                       help="folder where the recipes in configs/ expect the world's files (symlinks)")
    build.add_argument("overrides", nargs="*", metavar="key=value",
                       help="WorldBuildConfig settings, e.g. seed=1 size=small cache_dir=.cache/rlhfkit")
    show_p = sub.add_parser("show", help="sample prompts per family with gold-judged responses")
    show_p.add_argument("--seed", type=int, default=0)
    show_p.add_argument("-n", type=int, default=2, help="prompts per family")
    show_p.add_argument("--tools", action="store_true",
                        help="also show responses that call the calculator (the tool world's language)")
    cand = sub.add_parser("candidates", help="sample items for the annotation app from the world (no model)")
    cand.add_argument("--out", required=True, help="JSON Lines for `rlhfkit annotate import`")
    cand.add_argument("-n", type=int, default=60, help="items (pairs and rankings of 4; every 10th is gold)")
    cand.add_argument("--seed", type=int, default=0)
    chat = sub.add_parser("chat-data", help="a small chat dataset (messages lists): sft, prefs, prompts")
    chat.add_argument("--out", required=True, help="folder for sft.jsonl, prefs.jsonl, prompts.jsonl")
    chat.add_argument("-n", type=int, default=64, help="rows per file (default 64)")
    chat.add_argument("--seed", type=int, default=0)
    judge_p = sub.add_parser("judge", help="score a JSON Lines file of {prompt, response} with the gold judge")
    judge_p.add_argument("--responses", required=True, help="JSON Lines of {\"prompt\", \"response\"}")
    judge_p.add_argument("--out", help="write each row with its behaviour, goal and utility here")
    judge_p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    if args.action == "candidates":
        rows = candidates(args.seed, args.n)
        from rlhfkit.data import write_rows

        write_rows(args.out, rows)
        print(f"wrote {len(rows)} items to {args.out}; next: rlhfkit annotate import {args.out} --db DB")
    elif args.action == "chat-data":
        from rlhfkit.data import write_rows
        from rlhfkit.worlds.chat_data import chat_rows

        if args.n < 1:
            raise UserError(f"-n must be at least 1, got {args.n}.")
        for name, rows in chat_rows(args.n, args.seed).items():
            write_rows(Path(args.out) / name, rows)
        print(f"wrote sft.jsonl, prefs.jsonl, prompts.jsonl ({args.n} rows each) to {args.out}")
    elif args.action == "show":
        show(args.seed, args.n, args.tools)
    elif args.action == "judge":
        judge_file(args.responses, args.out, args.seed)
    else:
        from rlhfkit.config import load_config
        from rlhfkit.worlds.build import WorldBuildConfig, build_world

        assets = build_world(load_config(WorldBuildConfig, None, args.overrides))
        link_assets(assets, Path(args.out))
        print(f"world ready in {assets.root}; linked from {args.out}/ (base, tokenizer, sft.jsonl, "
              f"prompts_train.jsonl, prompts_eval.jsonl) for the recipes in configs/")
    return 0


def link_assets(assets, out: Path) -> None:
    """Point ``out/{base,tokenizer,sft.jsonl,prompts_*.jsonl}`` at the cached build (replacing old links)."""
    out.mkdir(parents=True, exist_ok=True)
    targets = {"base": assets.base_dir, "tokenizer": assets.tokenizer_dir, "sft.jsonl": assets.sft_file,
               "prompts_train.jsonl": assets.train_prompts_file, "prompts_eval.jsonl": assets.eval_prompts_file}
    for name, target in targets.items():
        link = out / name
        tmp = out / f".{name}.link"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(Path(target).resolve())
        tmp.replace(link)  # atomic: the recipes never see a missing link


def candidates(seed: int = 0, n: int = 60) -> list[dict]:
    """Items for the annotation app made from the world's own response generator: two out of three are
    pairs, one a ranking of 4; every 10th carries its gold-judge answer as a (hidden) gold item."""
    world = World.build(seed)
    judge = GoldJudge(world)
    rng = random.Random(f"candidates-{seed}")
    rows: list[dict] = []
    for i, prompt in enumerate(world.sample_prompts(3 * n, seed=f"candidates-{seed}")):
        if len(rows) == n:
            break
        k = 4 if i % 3 == 2 else 2
        behaviours = list(bh.FAMILY_BEHAVIOURS[prompt.family])
        rng.shuffle(behaviours)
        responses = [generate_response(prompt, b, rng, rng.choice(("plain", "plain", "polite", "rude")))
                     for b in behaviours[:k]]
        utilities = [judge.score(prompt, r) for r in responses]
        if len(set(responses)) < k or len(set(utilities)) < k:
            continue  # an item whose answers the gold judge cannot order is no use as gold or as a pair
        row = {"prompt": prompt.text, "responses": responses, "kind": "pair" if k == 2 else "rank"}
        if len(rows) % 10 == 9:
            order = sorted(range(k), key=lambda j: -utilities[j])
            row["gold"] = {"best": order[0]} if k == 2 else {"ranking": order}
        rows.append(row)
    return rows
