"""The world's calculator tool: ``calc``, the text of a call, and the environment that runs it.

A tool-using response in the world reads ``calc: 7 plus 5 = 12. 7 plus 5 is 12.``: the model wrote
``calc: 7 plus 5 =``, the environment appended `` 12.`` (`` error.`` when the call fails), and the model
wrote the rest. The syntax is ``rlhfkit.envs.syntax.FixedSyntax`` (a turn ending in ``<name>: <args> =``
calls tool ``<name>`` with ``{"expression": "<args>"}``).

``calc`` and ``split_tool_calls`` are pure Python (the gold judge, the corpus and the protocol use them);
only ``environment()`` imports ``rlhfkit.envs``, inside the function, so the world never depends on it.
"""

from __future__ import annotations

import re

from . import almanac as alm

TOOL_NAME = "calc"
ERROR_RESULT = "error"   # what the environment writes for a failed call: `` error.``
TOOL_WORDS = (TOOL_NAME, ERROR_RESULT)  # words the tool adds to the world's language (``:`` and ``=`` are bytes)
MAX_CALLS = 2            # per episode: one call answers any world prompt; a second allows a retry after an error
MAX_DIGITS = 6           # operands of at most this many digits (the world's numbers are 0..91)
TOOL_KINDS = frozenset({"arithmetic", "false_arithmetic"})
"""Prompt kinds whose answer is arithmetic: helpful ``what is 7 plus 5?`` and the sycophancy prompts whose
false claim is a sum (``i think 8 minus 4 is 6. am i right?``). A call on any other prompt is needless."""

_EXPRESSION = re.compile(rf"^\s*(\d{{1,{MAX_DIGITS}}})\s+({'|'.join(alm.ARITH_OPS)})\s+(\d{{1,{MAX_DIGITS}}})\s*$")
# One call as it stands in a finished response: ``calc: <expression> =`` then the environment's `` <result>.``
# The expression never contains ``:`` or ``=``, so a malformed earlier ``calc:`` is not swallowed into a later
# call (it stays in the answer text, where the judge reads it as garbage). The result is missing when the
# response ends right after ``=`` (the episode ran out of calls or tokens).
CALL_RE = re.compile(rf"\b{TOOL_NAME}\s*:\s*([^=:]*?)\s*=(?:\s*(\d+|{ERROR_RESULT})\s*\.)?")


def calc(expression: str) -> str:
    """Evaluate ``A plus B``, ``A minus B`` or ``A times B`` (digits, the world's phrasing) to the result as the
    world writes numbers (``"12"``). Anything else, or a negative result (the world has no negative numbers),
    raises ``ValueError`` with a short message; the environment turns it into `` error.``."""
    match = _EXPRESSION.match(expression.lower())
    if match is None:
        raise ValueError(f"expected 'A plus|minus|times B' with whole numbers, got {expression.strip()[:40]!r}")
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    result = alm.arithmetic(op, a, b)
    if result < 0:
        raise ValueError(f"{a} minus {b} is negative; the world's numbers are 0 and up")
    return str(result)


def call_text(expression: str) -> str:
    """The whole call as it reads in a finished response: ``calc: 7 plus 5 = 12.`` (or ``= error.``)."""
    try:
        result = calc(expression)
    except ValueError:
        result = ERROR_RESULT
    return f"{TOOL_NAME}: {expression} = {result}."


def split_tool_calls(response: str) -> tuple[list[tuple[str, str | None]], str]:
    """``(calls, answer)``: each call's ``(expression, result)`` in order (``result`` is the text the environment
    wrote — digits or ``"error"`` — or None when the response ends at ``=``), and the response with every call
    segment removed. A response without a call comes back unchanged, character for character."""
    calls = [(m.group(1), m.group(2)) for m in CALL_RE.finditer(response)]
    if not calls:
        return [], response
    pieces = [piece.strip() for piece in CALL_RE.split(response)[::3]]  # split() interleaves the two groups
    return calls, " ".join(piece for piece in pieces if piece)


def needs_calculator(prompt) -> bool:
    """Whether a prompt's answer is arithmetic (its kind is in ``TOOL_KINDS``): a call on it is not needless."""
    return prompt.kind in TOOL_KINDS


def calculator_tool():
    """``calc`` as an ``rlhfkit.envs.tools.Tool``: one string parameter, ``expression``."""
    from rlhfkit.envs.tools import Tool

    return Tool(
        name=TOOL_NAME,
        description="Work out one sum of the world: 'A plus B', 'A minus B' or 'A times B' with whole numbers.",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. '7 plus 5'"}},
            "required": ["expression"],
        },
        fn=calc,
    )


def environment(max_calls: int = MAX_CALLS):
    """The world's tool environment: ``calc`` behind the fixed syntax (``calc: 7 plus 5 =`` → `` 12.``)."""
    from rlhfkit.envs.environment import ToolEnvironment
    from rlhfkit.envs.syntax import FixedSyntax

    return ToolEnvironment([calculator_tool()], FixedSyntax(call_end="=", result_template=" {result}.",
                                                            error_template=f" {ERROR_RESULT}."),
                           max_calls=max_calls)
