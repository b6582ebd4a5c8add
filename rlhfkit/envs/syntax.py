"""Tool-call syntaxes: how a model writes a call inside its turn, and how the result is written back.

A syntax has ``stop_strings`` (text at which the model's turn pauses so the environment can answer),
``parse(turn_text) -> ToolCall | None`` (None: the turn holds no call; :class:`MalformedToolCall` for a call
that cannot be read), and ``format_result(text)`` / ``format_error(message)``, the observation's text.

- :class:`FixedSyntax` — one line, ``calc: 7 plus 5 =``, answered `` 12.``: for small models and the world.
- :class:`JsonSyntax` — the Hermes/Qwen chat-template style, ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``
  answered by ``<tool_response>…</tool_response>``; :meth:`JsonSyntax.from_chat_template` reads the wrapping of
  the result from a tokenizer whose chat template accepts ``tools=`` and a ``tool`` role.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Protocol


class MalformedToolCall(ValueError):
    """The turn holds a call that cannot be parsed; the message becomes an error observation."""


@dataclass
class ToolCall:
    name: str
    arguments: dict
    # FixedSyntax: the raw argument text, given to a single-parameter tool's parameter whatever its name
    raw: str | None = field(default=None, compare=False)


class ToolSyntax(Protocol):
    stop_strings: tuple[str, ...]

    def parse(self, turn_text: str) -> ToolCall | None: ...

    def format_result(self, text: str) -> str: ...

    def format_error(self, message: str) -> str: ...


@dataclass
class FixedSyntax:
    """``<name>: <args> <call_end>`` at the end of a turn is a call; ``<args>`` goes to the tool's only parameter
    (``arguments={"expression": args}``). The model writes ``calc: 7 plus 5 =``, the environment appends
    ``result_template`` (`` 12.``) and the model goes on: ``calc: 7 plus 5 = 12. 7 plus 5 is 12.``

    The call must end the turn (only whitespace after ``call_end``): a ``call_end`` inside ordinary text
    (``7 plus 5 = 12``) is not a call, and the turn resumes. A ``<name>:`` with nothing before ``call_end`` is
    malformed."""

    call_end: str = "="
    result_template: str = " {result}."
    error_template: str = " error."

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.call_end,)

    def parse(self, turn_text: str) -> ToolCall | None:
        end = re.escape(self.call_end)
        match = re.search(rf"(?:^|(?<=[\s.!?,;]))([A-Za-z_]\w*):([^\n:]*?){end}\s*$", turn_text)
        if match is None:
            return None
        raw = match.group(2).strip()
        if not raw:
            raise MalformedToolCall(f"the call to {match.group(1)} has no arguments")
        return ToolCall(match.group(1), {"expression": raw}, raw=raw)

    def format_result(self, text: str) -> str:
        return self.result_template.format(result=text)

    def format_error(self, message: str) -> str:
        return self.error_template.format(message=message)


@dataclass
class JsonSyntax:
    """``<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>`` (Hermes, Qwen 2.5/3) ends a turn and
    is answered by ``result_template`` — by default the text Qwen's chat template writes for a ``tool`` message
    and the next assistant turn's header would be model-specific, so the plain
    ``<tool_response>\\n{result}\\n</tool_response>`` is the default; :meth:`from_chat_template` takes the
    exact wrapping from a tokenizer's template."""

    open_tag: str = "<tool_call>"
    close_tag: str = "</tool_call>"
    result_template: str = "\n<tool_response>\n{result}\n</tool_response>\n"
    error_template: str = "\n<tool_response>\nerror: {message}\n</tool_response>\n"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.close_tag,)

    def parse(self, turn_text: str) -> ToolCall | None:
        start = turn_text.rfind(self.open_tag)
        if start < 0:
            return None
        body = turn_text[start + len(self.open_tag):]
        close = body.find(self.close_tag)
        if close < 0:
            raise MalformedToolCall(f"{self.open_tag} without {self.close_tag}")
        if body[close + len(self.close_tag):].strip():
            return None  # a call followed by more text was not the turn's last act: the model went on by itself
        try:
            call = json.loads(body[:close])
        except json.JSONDecodeError as exc:
            raise MalformedToolCall(f"the call is not JSON ({exc.msg})") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise MalformedToolCall('the call must be {"name": ..., "arguments": {...}}')
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise MalformedToolCall("the arguments are not a JSON object") from None
        if not isinstance(arguments, dict):
            raise MalformedToolCall("the arguments are not a JSON object")
        return ToolCall(call["name"], arguments)

    def format_result(self, text: str) -> str:
        return self.result_template.format(result=text)

    def format_error(self, message: str) -> str:
        return self.error_template.format(message=message)

    @classmethod
    def from_chat_template(cls, tokenizer, tools: list | None = None) -> JsonSyntax:
        """The result wrapping the tokenizer's chat template writes: the text between an assistant's tool call
        and the next assistant turn's generation prompt, around a ``tool`` message — e.g. Qwen's
        ``<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n``.
        Raises ValueError when the template does not render a tool message or the call tags."""
        marker = "\ue000RESULT\ue000"
        call = {"type": "function", "function": {"name": "f", "arguments": {}}}
        messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "name": "f", "content": marker}]
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        syntax = cls()
        close = text.rfind(syntax.close_tag, 0, text.find(marker))
        if marker not in text or close < 0:
            raise ValueError(f"the chat template does not write {syntax.close_tag} calls and tool messages")
        between = text[close + len(syntax.close_tag):]
        before, after = between.split(marker, 1)
        wrap = before.replace("{", "{{").replace("}", "}}"), after.replace("{", "{{").replace("}", "}}")
        return cls(result_template=wrap[0] + "{result}" + wrap[1],
                   error_template=wrap[0] + "error: {message}" + wrap[1])
