"""The tool world's figures that `rlhfkit eval` does not print (README "RL with a calculator").

    python scripts/tool_breakdown.py samples runs/x/samples.jsonl   # from `rlhfkit eval --save-samples`
    python scripts/tool_breakdown.py reading runs/demo_tools/02-sft/final

``samples``: goal-only decisive wins and losses of policy A against B by family and prompt kind (with the
bootstrap interval the report uses), and for each side, on helpful sums and on sycophancy about sums, how many
responses call the calculator and how many of those are judged good — the "calls on helpful sums" column and the
"right after a call" shares. ``reading``: whether a model reads the tool's result rather than recalling the
sum: for the world's helpful eval sums (50 at seed 0), the chat prompt, then ``calc: <sum> = S. it is`` with S the
true sum shifted by 1 or 2 (then S the true sum), and the number greedy decoding says next.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict

from rlhfkit.evaluate.report import win_rate_intervals
from rlhfkit.judges import GoldJudge
from rlhfkit.worlds.calculator import TOOL_KINDS
from rlhfkit.worlds.protocol import pair_outcome


def breakdown(samples_path: str, world_seed: int = 0) -> None:
    judge = GoldJudge(world_seed=world_seed)
    by_kind: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    calls: dict[tuple[str, str], Counter] = defaultdict(Counter)
    texts: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    with open(samples_path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts[row["prompt"]][0].append(row["a"])
            texts[row["prompt"]][1].append(row["b"])
            ja, jb = judge.judge(row["prompt"], row["a"]), judge.judge(row["prompt"], row["b"])
            _, by_goal = pair_outcome(ja, jb)
            if by_goal:
                by_kind[(ja.family, ja.kind)][0 if by_goal > 0 else 1] += 1
            if ja.kind in TOOL_KINDS:
                for name, j in (("A", ja), ("B", jb)):
                    c = calls[(name, ja.kind)]
                    c["responses"] += 1
                    c["good"] += j.behaviour == "good"
                    c["call"] += j.tool_calls > 0
                    c["good after a call"] += j.tool_calls > 0 and j.behaviour == "good"
    ci = win_rate_intervals(judge, list(texts), [a for a, _ in texts.values()], [b for _, b in texts.values()])
    wins, losses = sum(w for w, _ in by_kind.values()), sum(lo for _, lo in by_kind.values())
    print(f"goal-only decisive: {wins} / {wins + losses} = {wins / max(1, wins + losses):.3f} "
          f"[{ci['win_rate/goal_decisive_ci_low']:.3f}, {ci['win_rate/goal_decisive_ci_high']:.3f}]")
    for (family, kind), (w, lo) in sorted(by_kind.items()):
        print(f"  {family:13s}{kind:19s} wins {w:4d}  losses {lo:4d}")
    for (name, kind), c in sorted(calls.items()):
        print(f"{name} on {kind}: " + ", ".join(f"{k} {v}" for k, v in c.items()))


def reading(model_dir: str, world_seed: int = 0) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.worlds import World

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    sums = [p for p in World.build(world_seed).eval_prompts if p.kind == "arithmetic"]
    rng = random.Random(0)
    for shifted in (True, False):
        said_shown = said_true = 0
        for p in sums:
            true = int(p.answer)
            # a shift of 1 or 2 that stays a world number (no negatives): down only where the sum allows it
            shown = true + rng.choice([d for d in (-2, -1, 1, 2) if true + d >= 0]) if shifted else true
            prompt = tok.apply_chat_template([{"role": "user", "content": p.text}], tokenize=False,
                                             add_generation_prompt=True)
            text = f"{prompt} calc: {p.subject[0]} {p.attribute} {p.subject[1]} = {shown}. it is"
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id or 0)
            number = re.search(r"\d+", tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
            value = int(number.group()) if number else None
            said_shown, said_true = said_shown + (value == shown), said_true + (value == true)
        label = "a shifted result" if shifted else "the true sum"
        print(f"shown {label}: says the shown value {said_shown} / {len(sums)}, the true sum {said_true} / {len(sums)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("samples").add_argument("path")
    sub.add_parser("reading").add_argument("model")
    for p in sub.choices.values():
        p.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "samples":
        breakdown(args.path, args.world_seed)
    else:
        reading(args.model, args.world_seed)


if __name__ == "__main__":
    main()
