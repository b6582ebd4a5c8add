"""Text normalisation shared by the prompt index, the judge and the corpus.

Everything the world writes is lower case, uses no apostrophes, and separates clauses with
punctuation. A word-level tokenizer decodes it as ``"what is 17 plus 25 ?"``, a person types
``"What is 17 plus 25?"``: both normalise to the same token list, so the judge and
``World.lookup`` never depend on spacing or case.
"""

from __future__ import annotations

import re

TOKEN_RE = re.compile(r"[a-z]+|\d+|[.,!?;:]")
CLAUSE_BREAKS = frozenset(".,!?;:")
TERMINALS = frozenset(".!?")


def tokenize(text: str) -> list[str]:
    """Lower-cased word, number and punctuation tokens; every other character is dropped."""
    return TOKEN_RE.findall(text.lower())


def normalize(text: str) -> str:
    """Canonical form of a text: its tokens joined by single spaces (the key of every index)."""
    return " ".join(tokenize(text))


def word_count(text: str) -> int:
    """Number of word and number tokens (punctuation not counted)."""
    return sum(1 for tok in tokenize(text) if tok not in CLAUSE_BREAKS)


def split_clauses(tokens: list[str]) -> tuple[list[tuple[str, ...]], bool]:
    """Split tokens at punctuation into clauses.

    Returns ``(clauses, terminated)``: the non-empty clauses in order, and whether the text ended
    with a terminal mark (``. ! ?``). An unterminated last clause may have been cut off by a
    generation limit, which the judge treats specially.
    """
    clauses: list[tuple[str, ...]] = []
    current: list[str] = []
    for tok in tokens:
        if tok in CLAUSE_BREAKS:
            if current:
                clauses.append(tuple(current))
            current = []
        else:
            current.append(tok)
    if current:
        clauses.append(tuple(current))
    terminated = bool(tokens) and tokens[-1] in TERMINALS and not current
    return clauses, terminated


def sentence(*clauses: str) -> str:
    """Join clauses into one sentence: ``sentence("no", "it is ruma") == "no, it is ruma."``."""
    return ", ".join(c for c in clauses if c) + "."
