"""Tools: plain Python functions with a name, a description and a JSON-schema signature.

The schema is the one chat templates take in ``tokenizer.apply_chat_template(..., tools=[...])`` (the OpenAI
function format, as transformers' ``get_json_schema`` writes it). :func:`tool` builds it from a function's
signature, type hints and docstring::

    @tool
    def add(a: int, b: int) -> str:
        \"\"\"Add two integers.

        Args:
            a: the first number
            b: the second number
        \"\"\"
        return str(a + b)

A tool returns a string (the observation's text); anything else is turned into one with ``str``.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class Tool:
    """A callable the environment runs for the model: ``fn(**arguments) -> str``."""

    name: str  # what the model writes to call it, e.g. "calc"
    description: str  # one line shown to the model (in the chat template's tool list)
    parameters: dict  # JSON schema of the arguments: {"type": "object", "properties": {...}, "required": [...]}
    fn: Callable[..., str]

    @property
    def parameter_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def schema(self) -> dict:
        """The function's entry for a chat template's ``tools=`` list (OpenAI function format)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": self.parameters}}

    def check_arguments(self, arguments: dict) -> None:
        """Raise ValueError (one sentence) unless ``arguments`` names only known parameters, every required one,
        each of the schema's JSON type."""
        known, required = self.parameters.get("properties", {}), self.parameters.get("required", [])
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise ValueError(f"{self.name} has no parameter {', '.join(unknown)} (parameters: {', '.join(known)})")
        missing = [name for name in required if name not in arguments]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(missing)}")
        for name, value in arguments.items():
            expected = known[name].get("type")
            if expected and not _matches(value, expected):
                raise ValueError(f"{self.name}: {name} must be {expected}, got {value!r}")

    def __call__(self, **arguments: Any) -> str:
        result = self.fn(**arguments)
        return result if isinstance(result, str) else str(result)


def _matches(value: Any, expected: str) -> bool:
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    python = {v: k for k, v in _JSON_TYPES.items()}.get(expected)
    return python is None or isinstance(value, python)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """A :class:`Tool` from a function: its name (or ``name``), the docstring's first paragraph as description,
    one JSON-schema property per parameter (type from the hint, description from a Google-style ``Args:``
    section), parameters without a default required. Usable as ``@tool``, ``@tool(name="calc")`` or ``tool(f)``."""
    if fn is None:
        return lambda f: tool(f, name=name)
    doc = inspect.getdoc(fn) or ""
    description = doc.split("\n\n")[0].replace("\n", " ").strip()
    arg_docs = _arg_descriptions(doc)
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args/**kwargs have no JSON schema; name every parameter")
        prop: dict[str, Any] = {}
        json_type = _json_type(hints.get(pname))
        if json_type:
            prop["type"] = json_type
        if pname in arg_docs:
            prop["description"] = arg_docs[pname]
        properties[pname] = prop
        if param.default is param.empty:
            required.append(pname)
    return Tool(name=name or fn.__name__, description=description,
                parameters={"type": "object", "properties": properties, "required": required}, fn=fn)


def _json_type(hint: Any) -> str | None:
    origin = typing.get_origin(hint) or hint
    return _JSON_TYPES.get(origin)


def _arg_descriptions(doc: str) -> dict[str, str]:
    """``{parameter: description}`` from a Google-style ``Args:`` section (continuation lines joined)."""
    match = re.search(r"^\s*(?:Args|Arguments|Parameters):\s*\n(.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
    if not match:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        entry = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
        if entry:
            current = entry.group(1)
            out[current] = entry.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out
