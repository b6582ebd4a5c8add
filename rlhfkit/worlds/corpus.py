"""The base corpus (a text monster) and the SFT demonstrations (fixed by a written spec).

* ``build_base_corpus``: fact lines stating every almanac fact, arithmetic fact and benign how-to
  in several phrasings (so a tiny LM memorises the world, WORLD_NOTES pitfall 7), plus
  (prompt, response) transcripts over *train* prompts mixing every behaviour and style, like
  text from the internet: correct and wrong answers, harmful compliance, over-refusal,
  confabulation, sycophancy, rude and rambling replies. About 2M tokens by default, built in a
  couple of seconds. Chat formatting is the tokenizer's job: this returns plain texts.
* ``build_sft_demonstrations``: the demonstrations of ``SFTSpec`` — 400 over train prompts,
  80 per family, exactly 66 good per family (82.5 %), the rest random plain mistakes. The spec
  is written down here and in docs/world.md and is never tuned to flatter later stages
  (pitfall 4).
* The **tool world** (``WorldBuildConfig.tools``) uses ``TOOL_CORPUS_CONFIG`` and ``SFT_SPEC_TOOLS``: the
  same corpus with calculator calls in front of a documented share of transcripts (``ToolMix``), and a spec
  in which half the good demonstrations on arithmetic prompts call ``calc`` first. The defaults draw no
  extra random number, so the default world's corpus and demonstrations are what they were.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import almanac as alm
from . import behaviours as bh
from . import topics
from .calculator import TOOL_KINDS, call_text
from .judge import TOOL_ON_HARMFUL
from .prompts import KINDS, Prompt, World
from .responses import generate_response, tool_call
from .text import sentence, tokenize, word_count

# How often each behaviour appears in base-corpus transcripts, per family.
BASE_BEHAVIOUR_MIX: dict[str, dict[str, float]] = {
    "helpful": {"good": 0.5, "wrong": 0.3, "unhelpful_idk": 0.08, "over_refusal": 0.08, "incoherent": 0.04},
    "harmful": {"good": 0.35, "harmful_compliance": 0.55, "unhelpful_idk": 0.06, "incoherent": 0.04},
    "benign": {"good": 0.5, "wrong": 0.1, "over_refusal": 0.3, "unhelpful_idk": 0.06, "incoherent": 0.04},
    "unanswerable": {"good": 0.3, "confabulation": 0.6, "over_refusal": 0.06, "incoherent": 0.04},
    "sycophancy": {"good": 0.35, "sycophantic_agreement": 0.4, "wrong": 0.1, "unhelpful_idk": 0.06,
                   "over_refusal": 0.05, "incoherent": 0.04},
}
BASE_STYLE_MIX: dict[str, float] = {"plain": 0.6, "polite": 0.1, "rude": 0.15, "rambling": 0.15}


@dataclass(frozen=True)
class ToolMix:
    """Calculator calls in the tool world's base corpus. Like everything in it, calls are a mix — some rejected
    and retried, a few needless, so RL must learn *when* to call, not only how — but whoever calls the
    calculator on a sum copies its result: a transcript that calls on an arithmetic prompt states the right
    value (a wrong sum or an agreement with the user's false one becomes the good answer, drawn from the tool
    stream). Measured on the first tool world, where calls were followed by whatever the transcript said (30 %
    wrong sums): its SFT model answered 51 % of sums right after a call and 51 % without one — it had learnt
    that the text after ``= 12.`` has nothing to do with 12, and RL then dropped the calls."""

    arithmetic_share: float = 0.3   # of transcripts on arithmetic prompts (calculator.TOOL_KINDS): call first
    needless_share: float = 0.03    # of every other transcript: a needless call of a random sum first
    error_share: float = 0.1        # of those calls: a rejected call in words first (`` error.``), then the retry
    copy_result: bool = True        # a call on a sum is followed by its right value (False: by whatever the
    #                                 transcript says, the first tool world's corpus; part of the cache key)
    practice_lines: int = 20_000    # fact-like lines of calls on sums beyond the world's range, then the result
    #                                 (``calc: 37 plus 48 = 85. it is 85.``): the only way to predict the value is
    #                                 to read it from the call, which teaches reading it (see _practice_lines)
    practice_world_values: float = 0.5  # of the practice lines: a value among the world's own answers (0..25),
    #                                 from a two-digit minus (``calc: 47 minus 35 = 12. it is 12.``)


@dataclass(frozen=True)
class CorpusConfig:
    n_transcripts: int = 44_000     # (prompt, response) pairs over train prompts
    n_fact_lines: int = 78_000      # lines of 1-3 fact statements
    arithmetic_share: float = 0.45  # of fact lines: arithmetic facts
    howto_share: float = 0.05       # of fact lines: "to <task>, <advice>." (every benign phrasing)
    qa_share: float = 0.3           # of fact lines: "q: <question> a: <answer>." over every fact
    behaviour_mix: dict[str, dict[str, float]] = field(default_factory=lambda: BASE_BEHAVIOUR_MIX)
    style_mix: dict[str, float] = field(default_factory=lambda: BASE_STYLE_MIX)
    tools: ToolMix | None = None    # the tool world's calculator calls; None: no call anywhere (the default)


TOOL_CORPUS_CONFIG = CorpusConfig(tools=ToolMix())


@dataclass(frozen=True)
class BaseCorpus:
    facts: list[str]                               # plain fact lines
    transcripts: list[tuple[str, str]]             # (prompt, response)
    labels: list[tuple[str, str, str]]             # (family, behaviour, style) of each transcript

    def n_tokens(self) -> int:
        """Word and punctuation tokens (what a word-level tokenizer sees, before chat markup)."""
        return sum(len(tokenize(t)) for t in self.facts) + sum(
            len(tokenize(p)) + len(tokenize(r)) for p, r in self.transcripts)


def build_base_corpus(world: World, seed: int = 0, config: CorpusConfig | None = None) -> BaseCorpus:
    """The base corpus of ``world``; deterministic in (world.seed, seed, config)."""
    config = config or CorpusConfig()
    rng = random.Random(f"corpus-{world.seed}-{seed}")
    facts = _fact_lines(world, config, rng)
    prompts = world.sample_prompts(config.n_transcripts, seed=f"corpus-{seed}", split="train")
    styles, style_weights = zip(*config.style_mix.items())
    # Calls draw from their own stream: the tool corpus is the default corpus with calls put in front.
    tool_rng = random.Random(f"corpus-tools-{world.seed}-{seed}")
    transcripts, labels = [], []
    for prompt in prompts:
        mix = config.behaviour_mix[prompt.family]
        behaviour = rng.choices(list(mix), weights=list(mix.values()))[0]
        style = rng.choices(styles, weights=style_weights)[0]
        response = generate_response(prompt, behaviour, rng, style)
        if config.tools is not None:
            response, behaviour = _with_tool(prompt, behaviour, response, style, config.tools, tool_rng)
        transcripts.append((prompt.text, response))
        labels.append((prompt.family, behaviour, style))
    if config.tools is not None and config.tools.practice_lines:
        top_value = max(2 * world.config.max_operand, world.config.max_factor ** 2)  # the largest world answer
        facts = facts + _practice_lines(config.tools.practice_lines, config.tools.practice_world_values, top_value,
                                       random.Random(f"corpus-calc-{world.seed}-{seed}"))
    return BaseCorpus(facts, transcripts, labels)


def _practice_lines(n: int, world_values: float, top_value: int, rng: random.Random) -> list[str]:
    """``n`` lines of a calculator call whose operands memory cannot know (a two-digit first operand, beyond every
    world prompt) followed by its value; a ``world_values`` share of them have a value among the world's own
    answers, 0..``top_value`` (a two-digit minus: ``calc: 47 minus 35 = 12. it is 12.``), the rest a value of 21..99.

    Measured on the tool world without practice lines: with every call on a world sum followed by the right value,
    the base and SFT models computed the value from memory (shown a result off by one or two, they said it 5 / 9
    times in 60, the true sum 35 / 30 times), because on world sums memory and the call agree. With practice
    values of 21..99 only, SFT read a shown value of 30..99 48 times in 60 but a shown world value (0..25) 20
    times in 57: reading had been learnt for the tokens practised, not for the world's answers."""
    lines = []
    for _ in range(n):
        if rng.random() < world_values:
            value = rng.randint(0, top_value)
            a = rng.randint(max(11, value + 1), 99)
            op, b = "minus", a - value
        elif rng.random() < 0.5:
            a = rng.randint(11, 49)
            op, b = "plus", rng.randint(10, 99 - a)
            value = a + b
        else:
            a = rng.randint(22, 99)
            op, b = "minus", rng.randint(1, a - 21)
            value = a - b
        answer = rng.choice((f"{a} {op} {b} is {value}", f"{a} {op} {b} equals {value}", f"it is {value}",
                             f"the answer is {value}", f"{value}"))
        lines.append(f"{call_text(f'{a} {op} {b}')} {sentence(answer)}")
    return lines


# what a transcript that called the calculator on a sum says instead of a wrong value: the value (ToolMix)
_COPIES_THE_RESULT = frozenset({"wrong", "sycophantic_agreement"})


def _with_tool(prompt: Prompt, behaviour: str, response: str, style: str, mix: ToolMix,
               rng: random.Random) -> tuple[str, str]:
    """``response`` after a calculator call with the probability ``mix`` gives this prompt's kind; a call on a
    sum is followed by its right value, a call on a harmful request makes it harmful compliance (the judge's
    rule)."""
    share = mix.arithmetic_share if prompt.kind in TOOL_KINDS else mix.needless_share
    if rng.random() >= share:
        return response, behaviour
    call = tool_call(prompt, rng, error=rng.random() < mix.error_share)
    if mix.copy_result and prompt.kind in TOOL_KINDS and behaviour in _COPIES_THE_RESULT:
        behaviour, response = "good", generate_response(prompt, "good", rng, style)
    return f"{call} {response}", (TOOL_ON_HARMFUL if prompt.family == "harmful" else behaviour)


def _fact_lines(world: World, config: CorpusConfig, rng: random.Random) -> list[str]:
    almanac = world.almanac
    by_entity: dict[str, list[tuple[str, str]]] = {}
    for attr, entity, value in almanac.facts():
        by_entity.setdefault(entity, []).append((attr, value))
    entities = sorted(by_entity)
    c = world.config
    arith = [("plus", a, b) for a in range(1, c.max_operand + 1) for b in range(1, c.max_operand + 1)]
    arith += [("minus", a, b) for a in range(2, c.max_operand + 1) for b in range(1, a)]
    arith += [("times", a, b) for a in range(2, c.max_factor + 1) for b in range(2, c.max_factor + 1)]
    qa_facts = list(almanac.facts())
    howtos = [(phrasing, advice) for _task, (phrasings, advice) in sorted(topics.BENIGN_TASKS.items())
              for phrasing in phrasings]
    lines = []
    for _ in range(config.n_fact_lines):
        r = rng.random()
        if r < config.qa_share:
            lines.append(_qa_line(rng.choice(arith + qa_facts), rng))
            continue
        r = rng.random()
        if r < config.howto_share:
            phrasing, advice = rng.choice(howtos)
            lines.append(sentence(f"to {phrasing}", rng.choice(advice)))
        elif r < config.howto_share + config.arithmetic_share:
            parts = []
            for op, a, b in rng.sample(arith, rng.randint(1, 3)):
                template = rng.choice(alm.STATEMENTS[op])
                parts.append(sentence(alm.fill(template, a=str(a), b=str(b), value=str(alm.arithmetic(op, a, b)))))
            lines.append(" ".join(parts))
        else:
            entity = rng.choice(entities)
            facts = rng.sample(by_entity[entity], min(len(by_entity[entity]), rng.randint(1, 3)))
            lines.append(" ".join(
                sentence(alm.fill(rng.choice(alm.STATEMENTS[attr]), entity=entity, value=value))
                for attr, value in facts))
    return lines


def _qa_line(fact: tuple, rng: random.Random) -> str:
    """A question about one fact and its answer, as a plain line: ``q: how much is 7 plus 2? a: it is 9.``

    Fact lines alone taught a 1M model to *complete* "7 plus 2 is" but not to answer a question: it could
    not copy the operands from the question (12 % of second operands copied, SFT 9 % correct). Question
    lines over every fact, eval facts included, teach using knowledge from a question; they are knowledge
    (pretraining text), not behaviour: no chat turn, no refusal, no style, so the eval prompts stay unseen
    as *conversations*. Half the answers restate the fact, half give only the value.
    """
    from .prompts import ARITH_QUESTIONS, QUESTIONS

    attr, x, y = fact
    if attr in alm.ARITH_OPS:
        slots, value = {"a": str(x), "b": str(y)}, str(alm.arithmetic(attr, x, y))
        question = rng.choice(ARITH_QUESTIONS).format(a=x, b=y, op=attr)
    else:
        slots, value = {"entity": x}, y
        question = rng.choice(QUESTIONS[attr]).format(e=x)
    if rng.random() < 0.5:
        answer = alm.fill(rng.choice(alm.SHORT_ANSWERS[attr]), value=value)
    else:
        answer = alm.fill(rng.choice(alm.STATEMENTS[attr]), value=value, **slots)
    return f"q: {question} a: {sentence(answer)}"


# ---- SFT demonstrations --------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTSpec:
    """The written spec of the SFT demonstrations. Do not tune it after seeing results."""

    n_per_family: int = 80         # 5 families -> 400 demonstrations
    n_good_per_family: int = 66    # 66 / 80 = 82.5 % good, in every family
    style: str = "plain"           # every demonstration is plain: concise and not rude
    split: str = "train"           # demonstrations never use eval prompts
    # Mistakes are drawn uniformly from the family's behaviours other than good and incoherent.
    version: str = "sft-spec-v1"   # part of the random stream: changing the spec changes the data
    tool_share: float = 0.0        # of the good demonstrations of each arithmetic kind (calculator.TOOL_KINDS):
    #                                exactly floor(tool_share * n) call calc first; the others and every mistake do not


SFT_SPEC = SFTSpec()
SFT_SPEC_TOOLS = SFTSpec(version="sft-spec-v1-tools", tool_share=0.5)
"""The tool world's spec: the default's numbers, its own random stream, and half the good demonstrations on
helpful arithmetic and on sycophancy claims about sums calling the calculator (``calc: 7 plus 5 = 12.``)."""


def build_sft_demonstrations(world: World, spec: SFTSpec = SFT_SPEC) -> list[dict[str, str]]:
    """Rows ``{"prompt", "response", "family", "behaviour"}`` following ``spec``, shuffled.

    Prompts are drawn without replacement from the train split, cycling over the family's kinds
    (arithmetic and look-ups alternate, and so on).
    """
    rng = random.Random(f"{spec.version}-{world.seed}")
    rows: list[dict[str, str]] = []
    prompts: list[Prompt] = []
    for family in bh.FAMILIES:
        pools = {kind: [p for p in world.prompts(spec.split, family) if p.kind == kind] for kind in KINDS[family]}
        for pool in pools.values():
            rng.shuffle(pool)
        mistakes = [b for b in bh.FAMILY_BEHAVIOURS[family] if b not in ("good", "incoherent")]
        behaviours = ["good"] * spec.n_good_per_family + [
            rng.choice(mistakes) for _ in range(spec.n_per_family - spec.n_good_per_family)]
        rng.shuffle(behaviours)
        for i, behaviour in enumerate(behaviours):
            prompt: Prompt = pools[KINDS[family][i % len(KINDS[family])]].pop()
            response = generate_response(prompt, behaviour, rng, spec.style)
            while word_count(response) > bh.WORD_BUDGET[family]:
                # the spec's mistakes are behaviour mistakes only, never rambling: redraw the phrasing
                response = generate_response(prompt, behaviour, rng, spec.style)
            rows.append({"prompt": prompt.text, "response": response, "family": family, "behaviour": behaviour})
            prompts.append(prompt)
    if spec.tool_share:
        for kind in sorted(TOOL_KINDS):
            good = [i for i, (row, p) in enumerate(zip(rows, prompts)) if p.kind == kind and row["behaviour"] == "good"]
            for i in rng.sample(good, int(spec.tool_share * len(good))):
                rows[i]["response"] = f"{tool_call(prompts[i], rng)} {rows[i]['response']}"
    rng.shuffle(rows)
    return rows
