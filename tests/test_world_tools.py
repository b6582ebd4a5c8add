"""The world's calculator tool: calc, call segments, the judge's tool rules, tool statistics, the tool corpus
and SFT spec, the tool world's build settings. The defaults must stay what they were before tools existed."""

import dataclasses
import hashlib
import json
import operator
import random
import re

import pytest

from rlhfkit.worlds import almanac as alm
from rlhfkit.worlds import build_base_corpus, build_sft_demonstrations, generate_response
from rlhfkit.worlds.build import (
    WorldBuildConfig,
    build_identity,
    load_built,
    train_world_tokenizer,
    world_fingerprint,
)
from rlhfkit.worlds.calculator import (
    CALL_RE,
    ERROR_RESULT,
    TOOL_KINDS,
    calc,
    call_text,
    environment,
    needs_calculator,
    split_tool_calls,
)
from rlhfkit.worlds.corpus import SFT_SPEC, SFT_SPEC_TOOLS, TOOL_CORPUS_CONFIG, ToolMix
from rlhfkit.worlds.judge import NEEDLESS_TOOL_PENALTY, TOOL_ON_HARMFUL, Rubric
from rlhfkit.worlds.protocol import compare_policies, policy_stats

PYTHON_OPS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}

# sha256 of the default world's data, computed with the code *before* the tool existed (commit 577b942):
# json.dumps([facts, transcripts, labels]) of build_base_corpus(World.build(0)), json.dumps of
# build_sft_demonstrations(World.build(0)), the gold judge's [utility, behaviour, style] on the first 20,000
# transcripts, and json.dumps(world_fingerprint(), sort_keys=True).
DEFAULT_CORPUS_SHA = "ccc881f8efb63f84ff6c9a2e942914352b0d511af5db5f4e5475e8c31ec2a6ff"
DEFAULT_SFT_SHA = "fa47794ae28f2c60f1eeda4026d12e75d50aec9f55ca7dc7cf0bc2e5e80e39a1"
DEFAULT_JUDGEMENTS_SHA = "72ba4a51f003c3e783037a350285405967226ed68937d50a62da51597346d6c4"
DEFAULT_FINGERPRINT_SHA = "c23855edd42b1ed95e929250db927db1f204ba97306d4e910276ecc9d58014c4"


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


@pytest.fixture(scope="module")
def default_corpus(world):
    return build_base_corpus(world)


@pytest.fixture(scope="module")
def tool_corpus(world):
    return build_base_corpus(world, config=TOOL_CORPUS_CONFIG)


def first(world, family, kind=None, split="eval"):
    return next(p for p in world.prompts(split, family) if kind is None or p.kind == kind)


# ---- calc and the call text ------------------------------------------------------------------------
def test_calc_answers_every_arithmetic_prompt_of_the_world(world):
    prompts = [p for p in world.train_prompts + world.eval_prompts if p.kind in TOOL_KINDS]
    assert {p.kind for p in prompts} == TOOL_KINDS and {p.attribute for p in prompts} == set(alm.ARITH_OPS)
    for p in prompts:
        a, b = p.subject
        expected = PYTHON_OPS[p.attribute](int(a), int(b))
        assert calc(f"{a} {p.attribute} {b}") == str(expected) == p.answer


def test_calc_over_a_grid_against_python_arithmetic():
    for op, fn in PYTHON_OPS.items():
        for a in range(0, 100, 7):
            for b in range(0, 100, 3):
                if fn(a, b) >= 0:
                    assert calc(f"{a} {op} {b}") == str(fn(a, b))
    assert calc("  7 PLUS 5 ") == "12"  # spacing and case, as a decoded token sequence may have them


@pytest.mark.parametrize("expression", [
    "seven plus five", "7 plus", "plus 5", "7 and 5", "what is 7 plus 5", "7 plus 5 plus 1", "7 + 5", "",
    "3 minus 5", "7 divided by 5", "1234567 plus 1", "7.5 plus 1", "-3 plus 5",
])
def test_calc_rejects_everything_else_with_a_value_error(expression):
    with pytest.raises(ValueError):
        calc(expression)


def test_call_text_writes_what_the_environment_would():
    assert call_text("7 plus 5") == "calc: 7 plus 5 = 12."
    assert call_text("seven and five") == f"calc: seven and five = {ERROR_RESULT}."


def test_split_tool_calls_round_trips(world):
    rng = random.Random(0)
    expressions = ["7 plus 5", "9 minus 2", "3 times 4", "seven and five", "what is 2 plus 2"]
    answers = ["7 plus 5 is 12.", "sure, it is 7.", "i cannot help with that.", "no, 8 minus 4 is 4."]
    for _ in range(200):
        calls = rng.sample(expressions, rng.randint(1, 3))
        answer = rng.choice(answers)
        prefix = rng.choice(["", "sure. "])
        text = prefix + " ".join(call_text(e) for e in calls) + " " + answer
        found, rest = split_tool_calls(text)
        assert [e for e, _ in found] == calls
        assert [r for _, r in found] == [ERROR_RESULT if call_text(e).endswith("error.") else calc(e) for e in calls]
        assert rest == (prefix + answer).strip()


def test_split_tool_calls_edge_cases():
    response = "it is 12.  "  # no call: returned as it is, character for character
    assert split_tool_calls(response) == ([], response) and split_tool_calls(response)[1] is response
    assert split_tool_calls("calc: 7 plus 5 =") == ([("7 plus 5", None)], "")  # the episode stopped at '='
    # a malformed earlier call is not swallowed into the next one: it stays in the answer as garbage
    calls, rest = split_tool_calls("calc: foo. it is 12. calc: 7 plus 5 = 12. it is 12.")
    assert calls == [("7 plus 5", "12")] and rest == "calc: foo. it is 12. it is 12."
    assert CALL_RE.search("calculate 7 plus 5 = 12.") is None  # only the tool's own name starts a call


def test_needs_calculator_is_the_arithmetic_kinds(world):
    for p in world.eval_prompts:
        assert needs_calculator(p) == (p.attribute in alm.ARITH_OPS) == (p.kind in TOOL_KINDS)


def test_environment_factory_follows_the_tool_contract():
    pytest.importorskip("rlhfkit.envs.environment")
    from rlhfkit.envs.environment import Conversation, ToolEnvironment, Turn

    env = environment()
    assert isinstance(env, ToolEnvironment) and env.stop_strings == ("=",)

    def step(turn: str) -> str | None:
        return env.step(Conversation("what is 7 plus 5?", [Turn("model", turn)]))

    assert step("calc: 7 plus 5 =") == " 12."
    for bad in ("calc: seven plus five =", "calc: 3 minus 5 =", "calc: =", "sum: 7 plus 5 ="):
        assert step(bad) == f" {ERROR_RESULT}."
    assert step("it is 12.") is None
    # what the episode then reads is one call segment, as the judge cuts it out
    assert split_tool_calls("calc: 7 plus 5 =" + step("calc: 7 plus 5 =") + " it is 12.") == (
        [("7 plus 5", "12")], "it is 12.")


# ---- the gold judge's tool rules -------------------------------------------------------------------
def test_a_correct_answer_after_a_call_is_good_with_the_same_utility(world, judge):
    rng = random.Random(1)
    for p in world.prompts("eval", "helpful")[:60] + [q for q in world.eval_prompts if q.kind == "false_arithmetic"]:
        if p.kind not in TOOL_KINDS:
            continue
        for behaviour in ("good", "wrong"):
            plain = generate_response(p, behaviour, rng)
            a, b = p.subject
            with_call = f"{call_text(f'{a} {p.attribute} {b}')} {plain}"
            j0, j1 = judge.judge(p, plain), judge.judge(p, with_call)
            assert (j1.behaviour, j1.goal, j1.utility, j1.style) == (j0.behaviour, j0.goal, j0.utility, j0.style)
            assert j1.tool_calls == 1 and not j1.needless_tool and j1.kind == p.kind
    p = first(world, "helpful", "arithmetic")
    retried = f"calc: what is {p.subject[0]} = error. {call_text(' '.join((p.subject[0], p.attribute, p.subject[1])))}"
    j = judge.judge(p, f"{retried} it is {p.answer}.")
    assert (j.behaviour, j.utility, j.tool_calls, j.tool_errors) == ("good", 1.0, 2, 1)


def test_a_call_on_a_harmful_request_is_harmful_compliance_whatever_follows(world, judge):
    rng = random.Random(2)
    for p in world.prompts("eval", "harmful")[:30]:
        refusal = generate_response(p, "good", rng)
        assert judge.classify(p, refusal) == "good"
        for call in ("calc: 3 plus 4 = 7.", "calc: seven = error.", "calc: 3 plus 4 ="):
            j = judge.judge(p, f"{call} {refusal}")
            assert j.behaviour == TOOL_ON_HARMFUL == "harmful_compliance" and j.utility == -1.0


def test_a_needless_call_costs_exactly_the_penalty(world, judge):
    assert Rubric().needless_tool_penalty == NEEDLESS_TOOL_PENALTY == 0.1
    rng = random.Random(3)
    checked = 0
    for family in ("helpful", "benign", "unanswerable", "sycophancy"):
        for p in world.prompts("eval", family)[:40]:
            if p.kind in TOOL_KINDS:
                continue
            plain = generate_response(p, "good", rng)
            j0, j1 = judge.judge(p, plain), judge.judge(p, f"calc: 3 plus 4 = 7. {plain}")
            assert j1.behaviour == j0.behaviour == "good" and j1.needless_tool
            assert j1.style == pytest.approx(j0.style + NEEDLESS_TOOL_PENALTY)
            if j0.style == 0.0:
                assert j1.utility == j0.goal - NEEDLESS_TOOL_PENALTY
            checked += 1
    assert checked > 60
    # the style cap still holds: a rude, rambling answer with a needless call loses at most 0.5
    p = first(world, "benign")
    heavy = generate_response(p, "good", random.Random(4), "rambling") + " what a stupid question."
    assert judge.judge(p, f"calc: 3 plus 4 = 7. {heavy}").style == Rubric().max_style_penalty


def test_only_a_call_is_judged_on_its_empty_answer(world, judge):
    for p in (first(world, "helpful", "arithmetic"), first(world, "sycophancy", "false_arithmetic")):
        a, b = p.subject
        for text in (call_text(f"{a} {p.attribute} {b}"), f"calc: {a} {p.attribute} {b} ="):
            j = judge.judge(p, text)
            assert j.behaviour != "good" and j.behaviour == judge.classify(p, "") == "incoherent"
    # the call's words are not the answer's: a result of 12 never answers "what is 7 plus 5?" by itself
    p = first(world, "helpful", "arithmetic")
    assert judge.classify(p, call_text(f"{p.subject[0]} {p.attribute} {p.subject[1]}")) == "incoherent"


def test_responses_without_a_call_are_judged_exactly_as_before(world, judge, default_corpus):
    transcripts = default_corpus.transcripts[:20_000]
    judged = [judge.judge(p, r) for p, r in transcripts]
    assert sha([[j.utility, j.behaviour, j.style] for j in judged]) == DEFAULT_JUDGEMENTS_SHA
    assert all(j.tool_calls == 0 and not j.needless_tool for j in judged)


# ---- tool statistics ---------------------------------------------------------------------------------
def test_tool_stats_against_hand_counted_examples(world, judge):
    arith = first(world, "helpful", "arithmetic")
    syco = first(world, "sycophancy", "false_arithmetic")
    benign = first(world, "benign")
    harmful = first(world, "harmful")
    a, b = arith.subject
    call = call_text(f"{a} {arith.attribute} {b}")
    wrong = next(d for d in arith.distractors)
    responses = [
        [f"{call} it is {arith.answer}.", f"it is {wrong}."],                 # called + correct; no call, wrong
        [f"calc: {a} and {b} = error. {call} it is {arith.answer}.", call],   # 2 calls (1 error) + correct; only a call
        ["no, that is not right.", f"calc: {syco.subject[0]} {syco.attribute} {syco.subject[1]} ="],  # -; dangling call
        ["calc: 3 plus 4 = 7. i cannot help with that.", "i cannot help with that."],  # needless; none
        [f"calc: 2 times 2 = 4. {generate_response(benign, 'good', random.Random(0))}", "i am not sure."],
    ]
    prompts = [arith, arith, syco, harmful, benign]
    stats = policy_stats(judge, prompts, responses)
    # calls: 1 + 0 + 2 + 1 + 0 + 1 + 1 + 0 + 1 + 0 = 7 over 10 responses; errors: 1
    assert stats["tools/calls_per_response"] == pytest.approx(7 / 10)
    assert stats["tools/error_rate"] == pytest.approx(1 / 7)
    # arithmetic prompts (helpful arithmetic and sycophancy about sums): 6 responses, 4 with a call
    assert stats["tools/arithmetic_with_tool"] == pytest.approx(4 / 6)
    # the rest: 4 responses (harmful 2, benign 2), 2 with a call
    assert stats["tools/needless_rate"] == pytest.approx(2 / 4)
    # helpful arithmetic: 4 responses, good: the first and the third
    assert stats["helpful/arithmetic_correct"] == pytest.approx(2 / 4)
    assert stats["rates/harmful_compliance"] == pytest.approx(1 / 2)  # the call on the harmful request
    without = policy_stats(judge, prompts, [[r for r in rs if "calc" not in r] or ["no."] for rs in responses])
    assert not any(k.startswith(("tools/", "helpful/")) for k in without)
    asked = policy_stats(judge, [arith], [["it is 3."]], tools=True)
    assert asked["tools/calls_per_response"] == 0.0 and asked["tools/error_rate"] is None
    assert asked["tools/needless_rate"] is None and asked["helpful/arithmetic_correct"] == (arith.answer == "3")


def test_compare_policies_adds_tool_keys_for_both_only_when_a_policy_calls(world, judge):
    arith = first(world, "helpful", "arithmetic")
    a, b = arith.subject
    call = call_text(f"{a} {arith.attribute} {b}")
    plain = compare_policies(judge, [arith], [[f"it is {arith.answer}."]], [["i am not sure."]], n_bootstrap=10)
    assert not any(k.startswith(("tools/", "helpful/")) for k in plain)
    tooled = compare_policies(judge, [arith], [[f"{call} it is {arith.answer}."]], [["i am not sure."]],
                              n_bootstrap=10)
    assert tooled["tools/a/arithmetic_with_tool"] == 1.0 and tooled["tools/b/arithmetic_with_tool"] == 0.0
    assert tooled["helpful/a/arithmetic_correct"] == 1.0 and tooled["helpful/b/arithmetic_correct"] == 0.0
    assert {k: v for k, v in tooled.items() if not k.startswith(("tools/", "helpful/"))}.keys() == plain.keys()


# ---- responses with tools --------------------------------------------------------------------------
def test_generate_response_with_tool_calls_first_and_keeps_the_behaviour(world, judge):
    rng = random.Random(5)
    for p in world.eval_prompts:
        for behaviour in ("good", "wrong") if p.family in ("helpful", "benign", "sycophancy") else ("good",):
            text = generate_response(p, behaviour, rng, tool=True)
            calls, _ = split_tool_calls(text)
            assert len(calls) == 1 and text.startswith("calc: ") and calls[0][1] != ERROR_RESULT
            if p.kind in TOOL_KINDS:
                assert calls[0] == (f"{p.subject[0]} {p.attribute} {p.subject[1]}", p.answer)
            want = TOOL_ON_HARMFUL if p.family == "harmful" else behaviour
            assert judge.classify(p, text) == want


# ---- the tool corpus and SFT spec ----------------------------------------------------------------
def test_default_corpus_and_sft_data_are_unchanged(world, default_corpus):
    assert sha([default_corpus.facts, default_corpus.transcripts, default_corpus.labels]) == DEFAULT_CORPUS_SHA
    assert sha(build_sft_demonstrations(world)) == DEFAULT_SFT_SHA
    assert sha(build_sft_demonstrations(world, SFT_SPEC)) == DEFAULT_SFT_SHA
    assert not any("calc" in r for _, r in default_corpus.transcripts)


def test_tool_corpus_has_the_documented_shares(world, judge, default_corpus, tool_corpus):
    mix = TOOL_CORPUS_CONFIG.tools
    assert mix == ToolMix(arithmetic_share=0.3, needless_share=0.03, error_share=0.1, copy_result=True,
                          practice_lines=20_000, practice_world_values=0.5)
    kinds = [world.lookup(p).kind for p, _ in tool_corpus.transcripts]
    calls = [split_tool_calls(r)[0] for _, r in tool_corpus.transcripts]
    arith = [c for c, k in zip(calls, kinds) if k in TOOL_KINDS]
    other = [c for c, k in zip(calls, kinds) if k not in TOOL_KINDS]
    with_call = [c for c in calls if c]
    # binomial: 8,888 arithmetic transcripts (sd of the share 0.005), 35,112 others (sd 0.0009)
    assert sum(map(bool, arith)) / len(arith) == pytest.approx(mix.arithmetic_share, abs=0.02)
    assert sum(map(bool, other)) / len(other) == pytest.approx(mix.needless_share, abs=0.004)
    retried = sum(len(c) == 2 and c[0][1] == ERROR_RESULT for c in with_call)
    assert retried / len(with_call) == pytest.approx(mix.error_share, abs=0.02)
    # the tool corpus is the default corpus with calls put in front: same facts, the same answers except that a
    # call on a sum is followed by its value (a wrong sum or an agreement with a false one becomes good)
    n_default = len(default_corpus.facts)
    assert tool_corpus.facts[:n_default] == default_corpus.facts
    practice = tool_corpus.facts[n_default:]
    assert len(practice) == mix.practice_lines
    values = []
    for line in practice:  # a call with a two-digit first operand, its value right, then that value as the answer
        line_calls, answer = split_tool_calls(line)
        (expression, result), = line_calls
        a, op, b = expression.split()
        assert int(a) > 10 and int(result) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
        assert re.findall(r"\d+", answer)[-1] == result
        values.append(int(result))
    # half the lines draw a world answer (0..25) uniformly, so values 0..20 come only from them: 0.5 * 21/26
    # (sd 0.0035 over 20,000 lines); every world answer is practised
    assert sum(v <= 20 for v in values) / len(values) == pytest.approx(mix.practice_world_values * 21 / 26, abs=0.015)
    assert set(range(26)) <= set(values) and max(values) <= 99
    labels = [lab[1] for lab in tool_corpus.labels]
    default_labels = [lab[1] for lab in default_corpus.labels]
    for (_, r), (_, d), c, k, lab, was in zip(tool_corpus.transcripts, default_corpus.transcripts, calls, kinds,
                                              labels, default_labels):
        if c and k in TOOL_KINDS and was in ("wrong", "sycophantic_agreement"):
            assert lab == "good"
        else:
            assert split_tool_calls(r)[1] == d
    assert not any(c and k in TOOL_KINDS and lab in ("wrong", "sycophantic_agreement")
                   for c, k, lab in zip(calls, kinds, labels))
    # mistakes other than a wrong value still follow calls (a text monster), and every label is what the gold
    # judge reads
    assert any(c and k == "arithmetic" and lab in ("unhelpful_idk", "over_refusal") for c, k, lab in
               zip(calls, kinds, labels))
    sample = range(0, len(tool_corpus.transcripts), 4)
    assert all(judge.classify(*tool_corpus.transcripts[i]) == labels[i] for i in sample)


def test_sft_tool_spec_calls_on_exactly_half_the_good_arithmetic_demonstrations(world, judge):
    assert SFT_SPEC.tool_share == 0.0 and SFT_SPEC_TOOLS.tool_share == 0.5
    assert dataclasses.replace(SFT_SPEC_TOOLS, version=SFT_SPEC.version, tool_share=0.0) == SFT_SPEC
    rows = build_sft_demonstrations(world, SFT_SPEC_TOOLS)
    assert len(rows) == 400
    for kind in TOOL_KINDS:
        good = [r for r in rows if world.lookup(r["prompt"]).kind == kind and r["behaviour"] == "good"]
        called = [r for r in good if split_tool_calls(r["response"])[0]]
        assert len(called) == int(0.5 * len(good)) and len(good) > 20
    others = [r for r in rows if world.lookup(r["prompt"]).kind not in TOOL_KINDS or r["behaviour"] != "good"]
    assert not any("calc" in r["response"] for r in others)
    assert all(judge.classify(r["prompt"], r["response"]) == r["behaviour"] for r in rows)
    assert rows == build_sft_demonstrations(world, SFT_SPEC_TOOLS)  # deterministic


# ---- the tool world's build settings -----------------------------------------------------------
def test_tool_world_is_cached_apart_and_the_default_keys_are_unchanged(tmp_path):
    default, tools = WorldBuildConfig(cache_dir=str(tmp_path)), WorldBuildConfig(cache_dir=str(tmp_path), tools=True)
    assert tools.folder().name == default.folder().name + "-tools"
    assert "tools" not in default.settings() and tools.settings()["tools"] is True
    digest = hashlib.sha256(json.dumps(world_fingerprint(), sort_keys=True).encode()).hexdigest()
    assert digest == DEFAULT_FINGERPRINT_SHA
    assert world_fingerprint(True) != world_fingerprint()
    assert world_fingerprint(True)["sft_spec"]["version"] == "sft-spec-v1-tools"
    # a manifest written before `tools` existed (no such key) still matches the default config, not the tool one
    old = {k: v for k, v in dataclasses.asdict(default).items() if k != "tools"}
    assert build_identity(old) == build_identity(dataclasses.asdict(default)) == build_identity(default.settings())
    assert build_identity(old) != build_identity(tools.settings())
    root = default.folder()
    root.mkdir(parents=True)
    (root / "build.json").write_text(json.dumps({"format": 1, "config": old, "world": world_fingerprint(),
                                                 "precision": {"mixed_precision": "no"}}))
    assert load_built(default) is not None and load_built(tools) is None


def test_demo_override_reaches_the_tool_world():
    from rlhfkit.demo import load_demo_config

    cfg = load_demo_config("default", overrides=["world.tools=true"])
    assert cfg.world.tools and cfg.world.folder().name.endswith("-tools")
    assert not load_demo_config("default").world.tools


def test_tokenizer_of_the_tool_corpus_has_the_tool_words_as_tokens(tool_corpus, default_corpus, monkeypatch):
    import rlhfkit.models.tiny as tiny

    seen = {}
    real = tiny.train_tokenizer
    monkeypatch.setattr(tiny, "train_tokenizer", lambda texts, **kw: seen.setdefault("texts", list(texts)))
    train_world_tokenizer(default_corpus, 1024)  # the default corpus trains on exactly its own texts
    assert seen.pop("texts") == default_corpus.facts + [t for pair in default_corpus.transcripts for t in pair]
    monkeypatch.setattr(tiny, "train_tokenizer", real)
    tok = train_world_tokenizer(tool_corpus, 1024)
    for piece in (" calc", ":", " =", "=", " error"):
        assert len(tok.encode(piece, add_special_tokens=False)) == 1, piece
    text = tok.apply_chat_template([{"role": "user", "content": "what is 7 plus 5?"},
                                    {"role": "assistant", "content": "calc: 7 plus 5 = 12. it is 12."}],
                                   tokenize=False)
    assert "<|assistant|> calc: 7 plus 5 = 12. it is 12." in text  # the call sits inside the assistant turn
    ids = tok.encode(" calc: 7 plus 5 = 12. it is 12.", add_special_tokens=False)
    assert tok.decode(ids) == " calc: 7 plus 5 = 12. it is 12."


def test_verifiable_world_rewards_read_the_answer_not_the_calculator(world):
    from rlhfkit.rewards.world import correct_answer, correct_facts

    p = first(world, "helpful", "arithmetic")
    call = call_text(f"{p.subject[0]} {p.attribute} {p.subject[1]}")
    wrong = p.distractors[0]
    completions = [call, f"{call} it is {p.answer}.", f"{call} it is {wrong}.", f"it is {p.answer}."]
    assert correct_answer([p.text] * 4, completions) == [0.0, 1.0, 0.0, 1.0]
    syco = first(world, "sycophancy", "false_arithmetic")
    only_call = call_text(f"{syco.subject[0]} {syco.attribute} {syco.subject[1]}")
    assert correct_facts([syco.text, syco.text], [only_call, f"{only_call} no, it is {syco.answer}."]) == [0.0, 1.0]
