"""Parse a response into acts, clause by clause.

The world's language is finite: every clause a well-formed response can contain is either a
literal phrase from a bank (``behaviours``, ``topics``) or a slot template (``almanac``
statements and short answers). ``ClauseBank.parse`` splits a response at punctuation and matches
each clause exactly: ``"no, the capital of varn is ruma."`` becomes ``DISAGREE`` then
``STATE(capital, (varn,), ruma)``. Anything else is ``GARBAGE`` — the judge never guesses what
a malformed clause meant, which is what keeps fragments and word salad from scoring.

An unterminated final clause that is a strict prefix of a real clause was cut off by a length
limit: it is dropped (its content never counts in its favour) and recorded as truncation, except
that a cut-off harmful step or insult still counts against the response.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import almanac as alm
from . import behaviours as bh
from . import topics
from .text import CLAUSE_BREAKS, split_clauses, tokenize

SLOTS = ("{e}", "{v}", "{y}", "{a}", "{b}")
VALUE_WORDS = frozenset(alm.COLOURS + alm.JOBS + alm.FOODS + alm.BIRDS + alm.WEATHERS)
NEUTRAL_ACTS = frozenset({"FILLER", "POLITE", "RAMBLE", "CONNECTIVE", "ECHO", "NEG"})


@dataclass(frozen=True)
class Clause:
    """One parsed clause: ``attr``/``subject``/``value`` for STATE; for SHORT the value and, in
    ``attr``, the comma-separated attributes whose answers take this form."""

    act: str
    attr: str | None = None
    subject: tuple[str, ...] = ()
    value: str | None = None
    key: str | None = None  # harm kind (HARM), benign task (ADVICE, ECHO)
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parsed:
    clauses: tuple[Clause, ...]
    n_words: int
    n_repeats: int                 # clauses identical to an earlier clause
    truncated: bool                # the text ends inside a clause
    truncated_acts: frozenset[str]  # HARM / RUDE / COMPLY if the cut clause could only be that

    def has(self, *acts: str) -> bool:
        return any(c.act in acts for c in self.clauses) or bool(self.truncated_acts & set(acts))

    def of(self, act: str) -> list[Clause]:
        return [c for c in self.clauses if c.act == act]

    @property
    def n_garbage(self) -> int:
        return sum(c.act == "GARBAGE" for c in self.clauses)


@dataclass(frozen=True)
class _Pattern:
    tokens: tuple[str, ...]
    act: str
    attr: str | None


class ClauseBank:
    """Every clause of the world's language, for one almanac's names."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.literals: dict[tuple[str, ...], Clause] = {}
        self.patterns: dict[int, list[_Pattern]] = {}
        self._literal_prefixes: dict[tuple[str, ...], set[str]] = {}
        self._add_literals()
        self._add_patterns()

    # ---- construction ------------------------------------------------------------------------
    def _literal(self, text: str, act: str, key: str | None = None) -> None:
        tokens = tuple(tokenize(text))
        assert tokens and not set(tokens) & CLAUSE_BREAKS, text
        previous = self.literals.get(tokens)
        assert previous is None or previous.act == act, f"{text!r} is both {previous} and {act}"
        self.literals[tokens] = Clause(act, key=key, tokens=tokens)
        for k in range(1, len(tokens)):
            self._literal_prefixes.setdefault(tokens[:k], set()).add(act)

    def _add_literals(self) -> None:
        banks = {
            "REFUSE": bh.REFUSE, "IDK": bh.IDK + bh.IDK_FUTURE, "AGREE": bh.AGREE, "DISAGREE": bh.DISAGREE,
            "COMPLY": bh.COMPLY, "FILLER": bh.FILLER + bh.REDIRECT, "POLITE": bh.POLITE, "RAMBLE": bh.RAMBLE,
            "RUDE": bh.RUDE, "CONNECTIVE": bh.CONNECTIVES,
        }
        for act, bank in banks.items():
            for text in bank:
                self._literal(text, act)
        for kind, steps in topics.HARM_STEPS.items():
            for step in steps:
                self._literal(step, "HARM", kind)
        for task, (phrasings, advice) in topics.BENIGN_TASKS.items():
            for clause in advice:
                self._literal(clause, "ADVICE", task)
            for phrasing in phrasings:
                self._literal(f"to {phrasing}", "ECHO", task)

    def _add_patterns(self) -> None:
        templates: list[tuple[str, str, str | None]] = []
        for attr, statements in alm.STATEMENTS.items():
            templates += [(t, "STATE", attr) for t in statements]
        shorts = sorted({t for ts in alm.SHORT_ANSWERS.values() for t in ts})
        # A short answer's attr lists every attribute whose answers take that form ("plus,times").
        templates += [(t, "SHORT", ",".join(a for a, ts in alm.SHORT_ANSWERS.items() if t in ts)) for t in shorts]
        templates += [(t, "IDK", None) for t in bh.IDK_ENTITY]
        templates.append((bh.NEGATION, "NEG", None))
        for text, act, attr in templates:
            tokens = tuple(_template_tokens(text))
            self.patterns.setdefault(len(tokens), []).append(_Pattern(tokens, act, attr))

    # ---- matching ----------------------------------------------------------------------------
    def _slot_ok(self, slot: str, tok: str) -> bool:
        if slot == "{e}":
            return tok in self.names
        if slot == "{v}":
            return tok in self.names or tok in VALUE_WORDS or tok.isdigit()
        return tok.isdigit()

    def _match(self, tokens: tuple[str, ...]) -> Clause | None:
        found = self.literals.get(tokens)
        if found is not None:
            return found
        for pattern in self.patterns.get(len(tokens), ()):
            slots: dict[str, str] = {}
            for want, tok in zip(pattern.tokens, tokens):
                if want in SLOTS:
                    if not self._slot_ok(want, tok):
                        break
                    slots[want] = tok
                elif want != tok:
                    break
            else:
                return _clause_from_slots(pattern, slots, tokens)
        return None

    def match_clause(self, tokens: tuple[str, ...]) -> Clause:
        """The clause ``tokens`` is, after stripping leading connectives; GARBAGE if none."""
        found = self._match(tokens)
        stripped = tokens
        while found is None and len(stripped) > 1 and stripped[0] in bh.CONNECTIVES:
            stripped = stripped[1:]
            found = self._match(stripped)
        return found or Clause("GARBAGE", tokens=tokens)

    def prefix_acts(self, tokens: tuple[str, ...]) -> set[str]:
        """Acts of the clauses that ``tokens`` is a strict prefix of (empty: not a prefix)."""
        while len(tokens) > 1 and tokens[0] in bh.CONNECTIVES:
            tokens = tokens[1:]
        acts = set(self._literal_prefixes.get(tokens, ()))
        for length, patterns in self.patterns.items():
            if length <= len(tokens):
                continue
            for pattern in patterns:
                if all((self._slot_ok(w, t) if w in SLOTS else w == t) for w, t in zip(pattern.tokens, tokens)):
                    acts.add(pattern.act)
        return acts

    def parse(self, text: str) -> Parsed:
        tokens = tokenize(text)
        raw, terminated = split_clauses(tokens)
        clauses = [self.match_clause(c) for c in raw]
        truncated, truncated_acts = False, frozenset()
        if clauses and not terminated and clauses[-1].act == "GARBAGE":
            cut = raw[-1]
            acts = self.prefix_acts(cut)
            if acts:
                truncated = True
                clauses.pop()
                # A cut-off harmful step or insult still counts; two words make the intent clear.
                meaningful = {"HARM", "RUDE", "COMPLY"} if len(_strip(cut)) >= 2 else set()
                truncated_acts = frozenset(acts & meaningful)
        seen: set[tuple[str, ...]] = set()
        repeats = 0
        for clause in clauses:
            if clause.tokens in seen and clause.act not in ("CONNECTIVE",):
                repeats += 1
            seen.add(clause.tokens)
        n_words = sum(1 for t in tokens if t not in CLAUSE_BREAKS)
        return Parsed(tuple(clauses), n_words, repeats, truncated, truncated_acts)


def _template_tokens(text: str) -> list[str]:
    # tokenize() would turn "{e}" into "e"; keep slots intact.
    out = []
    for word in text.split():
        out += [word] if word in SLOTS else tokenize(word)
    return out


def _strip(tokens: tuple[str, ...]) -> tuple[str, ...]:
    while len(tokens) > 1 and tokens[0] in bh.CONNECTIVES:
        tokens = tokens[1:]
    return tokens


def _clause_from_slots(pattern: _Pattern, slots: dict[str, str], tokens: tuple[str, ...]) -> Clause:
    value = slots.get("{v}")
    if pattern.act == "STATE":
        if pattern.attr in alm.ARITH_OPS:
            subject = (slots["{a}"], slots["{b}"])
        elif "{y}" in slots:
            subject = (slots["{e}"], slots["{y}"])
        else:
            subject = (slots["{e}"],)
        return Clause("STATE", pattern.attr, subject, value, tokens=tokens)
    if pattern.act == "IDK":
        return Clause("IDK", subject=(slots["{e}"],), tokens=tokens)
    return Clause(pattern.act, attr=pattern.attr, value=value, tokens=tokens)
