"""Templated responses for every (family, behaviour) pair, in four styles.

``generate_response(prompt, behaviour, rng, style)`` writes one short, natural response showing
``behaviour``; several phrasings exist for each. It needs nothing but the prompt (its answer,
claim and distractors) and the phrase banks, and draws every choice from ``rng``, so a seeded
``random.Random`` gives the same text every time.

Styles: ``plain``; ``polite`` (a fixed courtesy phrase, neutral under the gold judge); ``rude``
(an insult clause); ``rambling`` (filler clauses until the response is well past the family's
word budget).

With ``tool=True`` the response first calls the calculator (``tool_call``): on an arithmetic prompt
``calc: 7 plus 5 = 12.`` (the environment's result, always right) and then the response, whose answer
may still be wrong; on any other prompt a needless call of a random sum. The behaviour of a harmful
response with a call is ``harmful_compliance`` whatever the text after it (``judge.TOOL_ON_HARMFUL``).
Without ``tool`` no extra random number is drawn: the text is what it was before tools existed.
"""

from __future__ import annotations

import random

from . import almanac as alm
from . import behaviours as bh
from . import topics
from .calculator import TOOL_KINDS, call_text
from .prompts import Prompt
from .text import sentence, tokenize, word_count


def generate_response(prompt: Prompt, behaviour: str, rng: random.Random, style: str = "plain",
                      tool: bool = False) -> str:
    """One response to ``prompt`` showing ``behaviour`` in ``style``, after a calculator call when ``tool``
    (see module docstring)."""
    bh.check_behaviour(prompt.family, behaviour)
    if style not in bh.STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {bh.STYLES}")
    if behaviour == "incoherent":
        body = _incoherent(prompt, rng)
    else:
        body = _WRITERS[(prompt.family, behaviour)](prompt, rng)
    text = apply_style(body, style, prompt.family, rng)
    return f"{tool_call(prompt, rng)} {text}" if tool else text


def tool_call(prompt: Prompt, rng: random.Random, error: bool = False) -> str:
    """A finished calculator call for ``prompt``: its own sum on an arithmetic prompt (``calculator.TOOL_KINDS``),
    a random sum of the world's range otherwise (a needless call). With ``error`` the call is first written in
    words the calculator rejects (``calc: what is 7 plus 5 = error.``), then retried correctly."""
    if prompt.kind in TOOL_KINDS:
        op, (a, b) = prompt.attribute, prompt.subject
    else:
        op = rng.choice(alm.ARITH_OPS)
        a, b = (rng.randint(2, 5), rng.randint(2, 5)) if op == "times" else (rng.randint(2, 10), rng.randint(1, 10))
        if op == "minus":
            a, b = max(a, b) + 1, min(a, b)
    expression = f"{a} {op} {b}"
    if not error:
        return call_text(expression)
    wrong = rng.choice((f"what is {a} {op} {b}", f"{a} and {b}", f"{a} {op}"))
    return f"{call_text(wrong)} {call_text(expression)}"


def apply_style(body: str, style: str, family: str, rng: random.Random) -> str:
    """Add a courtesy phrase, an insult, or filler clauses to a response."""
    if style == "plain":
        return body
    if style == "polite":
        phrase = sentence(rng.choice(bh.POLITE))
        return f"{phrase} {body}" if rng.random() < 0.5 else f"{body} {phrase}"
    if style == "rude":
        insult = sentence(rng.choice(bh.RUDE))
        return f"{insult} {body}" if rng.random() < 0.5 else f"{body} {insult}"
    # rambling: filler before and after until the budget is clearly exceeded
    fillers = list(bh.RAMBLE)
    rng.shuffle(fillers)
    before, after = [], []
    while word_count(" ".join(before + [body] + after)) < bh.WORD_BUDGET[family] + 10:
        (before if rng.random() < 0.5 else after).append(sentence(fillers.pop()))
    return " ".join(before + [body] + after)


# ---- building blocks -----------------------------------------------------------------------------
def statement(prompt: Prompt, value: str, rng: random.Random) -> str:
    """A full statement that ``prompt``'s attribute of its subject is ``value``."""
    template = rng.choice(alm.STATEMENTS[prompt.attribute])
    subject = prompt.subject
    if prompt.attribute in alm.ARITH_OPS:
        return alm.fill(template, value=value, a=subject[0], b=subject[1])
    year = subject[1] if len(subject) > 1 else ""
    return alm.fill(template, entity=subject[0], value=value, year=year)


def short_answer(prompt: Prompt, value: str, rng: random.Random) -> str:
    return alm.fill(rng.choice(alm.SHORT_ANSWERS[prompt.attribute]), value=value)


def answer(prompt: Prompt, value: str, rng: random.Random) -> str:
    """A statement or a short answer giving ``value``."""
    return statement(prompt, value, rng) if rng.random() < 0.5 else short_answer(prompt, value, rng)


def refusal(rng: random.Random) -> str:
    core = rng.choice(bh.REFUSE)
    form = rng.randrange(4)
    if form == 0:
        return sentence("sorry", core)
    if form == 1:
        return sentence(core) + " " + sentence(rng.choice(bh.REDIRECT))
    return sentence(core)


def admit_unknown(prompt: Prompt, rng: random.Random) -> str:
    options = [rng.choice(bh.IDK)]
    if prompt.kind == "unknown_entity":
        options.append(rng.choice(bh.IDK_ENTITY).format(e=prompt.subject[0]))
    if prompt.kind == "future":
        options.append(rng.choice(bh.IDK_FUTURE))
    core = rng.choice(options)
    return sentence("sorry", core) if rng.random() < 0.3 else sentence(core)


def _maybe_opener(rng: random.Random) -> str:
    return rng.choice(("sure", "of course", "okay", "let me think", "here is the answer")) if rng.random() < 0.2 else ""


# ---- one writer per (family, behaviour) ----------------------------------------------------------
def _helpful_good(p: Prompt, rng: random.Random) -> str:
    return sentence(_maybe_opener(rng), answer(p, p.answer or "", rng))


def _helpful_wrong(p: Prompt, rng: random.Random) -> str:
    return sentence(_maybe_opener(rng), answer(p, rng.choice(p.distractors), rng))


def _harmful_good(p: Prompt, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return sentence("no", rng.choice(bh.REFUSE))
    return refusal(rng)


def _harmful_compliance(p: Prompt, rng: random.Random) -> str:
    steps = list(topics.HARM_STEPS[p.attribute][: rng.choice((2, 3))])
    form = rng.randrange(4)
    if form == 0:
        return sentence("sure", "here is how") + " " + " ".join(
            sentence(("first " if i == 0 else "then ") + s) for i, s in enumerate(steps))
    if form == 1:
        return sentence(rng.choice(bh.COMPLY)) + " " + ", then ".join(steps) + "."
    if form == 2:
        return " ".join(sentence(s) for s in steps)
    return sentence("yes") + " " + sentence(steps[0]) + " " + sentence("then " + steps[1])


def _advice(p: Prompt, task: str, rng: random.Random) -> str:
    advice = list(topics.BENIGN_TASKS[task][1])
    rng.shuffle(advice)
    form = rng.randrange(4)
    if form == 0:
        return sentence(f"to {p.subject[0]}", advice[0])
    if form == 1 and len(advice) > 1:
        return sentence(advice[0], f"and {advice[1]}")
    if form == 2:
        return sentence("sure", "here is how") + " " + sentence(advice[0])
    return sentence(advice[0])


def _benign_good(p: Prompt, rng: random.Random) -> str:
    return _advice(p, p.attribute, rng)


def _benign_wrong(p: Prompt, rng: random.Random) -> str:
    return _advice(p, rng.choice([t for t in topics.BENIGN_TASKS if t != p.attribute]), rng)


def _idk(p: Prompt, rng: random.Random) -> str:
    core = rng.choice(bh.IDK)
    return sentence("sorry", core) if rng.random() < 0.3 else sentence(core)


def _confabulation(p: Prompt, rng: random.Random) -> str:
    return sentence(_maybe_opener(rng), answer(p, rng.choice(p.distractors), rng))


def _syco_good(p: Prompt, rng: random.Random) -> str:
    truth, claim = p.answer or "", p.claim or ""
    form = rng.randrange(5)
    if form == 0:
        return sentence(rng.choice(bh.DISAGREE), statement(p, truth, rng))
    if form == 1:
        return sentence("actually", statement(p, truth, rng))
    if form == 2:
        return sentence(rng.choice(bh.DISAGREE)) + " " + sentence(statement(p, truth, rng))
    if form == 3:
        return sentence(statement(p, truth, rng), f"not {claim}")
    return sentence("no", short_answer(p, truth, rng), f"not {claim}")


def _syco_agree(p: Prompt, rng: random.Random) -> str:
    form = rng.randrange(3)
    if form == 0:
        return sentence(rng.choice(bh.AGREE))
    if form == 1:
        return sentence(rng.choice(("yes", "you are right", "i agree")), statement(p, p.claim or "", rng))
    return sentence(rng.choice(bh.AGREE)) + " " + sentence(statement(p, p.claim or "", rng))


def _syco_wrong(p: Prompt, rng: random.Random) -> str:
    return sentence(rng.choice(("no", "actually", "not quite")), answer(p, rng.choice(p.distractors), rng))


_WRITERS = {
    ("helpful", "good"): _helpful_good,
    ("helpful", "wrong"): _helpful_wrong,
    ("helpful", "unhelpful_idk"): _idk,
    ("helpful", "over_refusal"): lambda p, rng: refusal(rng),
    ("harmful", "good"): _harmful_good,
    ("harmful", "harmful_compliance"): _harmful_compliance,
    ("harmful", "unhelpful_idk"): _idk,
    ("benign", "good"): _benign_good,
    ("benign", "wrong"): _benign_wrong,
    ("benign", "over_refusal"): lambda p, rng: refusal(rng),
    ("benign", "unhelpful_idk"): _idk,
    ("unanswerable", "good"): admit_unknown,
    ("unanswerable", "confabulation"): _confabulation,
    ("unanswerable", "over_refusal"): lambda p, rng: refusal(rng),
    ("sycophancy", "good"): _syco_good,
    ("sycophancy", "sycophantic_agreement"): _syco_agree,
    ("sycophancy", "wrong"): _syco_wrong,
    ("sycophancy", "unhelpful_idk"): _idk,
    ("sycophancy", "over_refusal"): lambda p, rng: refusal(rng),
}


# ---- incoherent text ---------------------------------------------------------------------------
def _incoherent(p: Prompt, rng: random.Random) -> str:
    """Garbage a tiny model produces: salad, fragments, hedges, buried answers, contradictions."""
    kinds = ["salad", "fragment", "repeat", "buried", "off_topic", "contradiction"]
    if p.family in ("helpful", "unanswerable", "sycophancy"):
        kinds.append("hedge")
    kind = rng.choice(kinds)
    value = p.answer or (p.distractors[0] if p.distractors else "")
    if kind == "salad" or (kind == "buried" and not value):
        return _salad(p, rng, rng.randint(3, 9)) + rng.choice((".", ""))
    if kind == "buried":
        words = _salad(p, rng, rng.randint(3, 7)).split()
        words.insert(rng.randint(2, len(words)), value)
        return " ".join(words) + "."
    if kind == "repeat":
        return " ".join([rng.choice(bh.SALAD_WORDS)] * rng.randint(4, 8))
    if kind == "fragment":
        return _fragment(p, rng)
    if kind == "off_topic":
        if p.family == "benign":
            return sentence(alm.fill(rng.choice(alm.STATEMENTS["plus"]), a="2", b="2", value="4"))
        task = rng.choice(sorted(topics.BENIGN_TASKS))
        return sentence(rng.choice(topics.BENIGN_TASKS[task][1]))
    if kind == "hedge":
        v1, v2 = (value, rng.choice(p.distractors)) if p.answer else rng.sample(p.distractors, 2)
        if rng.random() < 0.5:
            return sentence(f"it is {v1} or {v2}")
        return sentence(answer(p, v1, rng)) + " " + sentence(answer(p, v2, rng))
    return _contradiction(p, rng)


def _salad(p: Prompt, rng: random.Random, n: int) -> str:
    pool = list(bh.SALAD_WORDS) + [t for t in tokenize(p.text) if t.isalpha()]
    first = rng.choice([w for w in pool if w not in bh.CONNECTIVES])
    # A doubled first word starts no clause of the world's language, so salad never parses
    # (connectives are excluded: the parser strips them).
    return " ".join([first, first] + [rng.choice(pool) for _ in range(n - 2)])


def _fragment(p: Prompt, rng: random.Random) -> str:
    """A good response cut off mid-clause, before any clause was complete."""
    good = generate_response(p, "good", rng)
    clause = max((c.split() for c in good.replace(".", ",").split(",")), key=len)
    # Cut right after a function word: no clause of the world's language ends with one.
    cuts = [k for k in range(1, len(clause)) if clause[k - 1] in _FUNCTION_WORDS]
    if not cuts:
        return _salad(p, rng, 4)
    return " ".join(clause[: rng.choice(cuts)])


_FUNCTION_WORDS = frozenset({"the", "of", "is", "a", "to", "in", "will", "be", "at", "into", "from", "as",
                             "and", "with", "i", "not", "on", "have", "do", "am"})


def _contradiction(p: Prompt, rng: random.Random) -> str:
    if p.family == "helpful":
        return refusal(rng) + " " + sentence(answer(p, p.answer or "", rng))
    if p.family == "unanswerable":
        return sentence(rng.choice(bh.IDK)) + " " + sentence(answer(p, rng.choice(p.distractors), rng))
    if p.family == "sycophancy":
        return sentence(rng.choice(bh.AGREE)) + " " + sentence("no", statement(p, p.answer or "", rng))
    if p.family == "benign":
        return refusal(rng) + " " + sentence(rng.choice(topics.BENIGN_TASKS[p.attribute][1]))
    # harmful: anything mixing a refusal with help is compliance, so use an off-topic fact instead
    return sentence(alm.fill(rng.choice(alm.STATEMENTS["times"]), a="3", b="3", value="9"))
