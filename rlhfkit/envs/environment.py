"""Environments: what answers a model's turn in a multi-turn episode.

An :class:`Environment` has one method, ``step(conversation) -> str | None``: the observation text appended
after the latest model turn (the model then takes another turn), or None when it has nothing to say. The
episode runner (:mod:`rlhfkit.envs.episodes`) asks it after each model turn that paused at one of its
``stop_strings`` (an environment without the attribute is asked after every turn that ended with EOS).

:class:`ToolEnvironment` runs tools called in a :mod:`~rlhfkit.envs.syntax`: a malformed call, an unknown tool,
bad arguments or a tool that raises become an *error observation* — never an exception that stops a run.

An environment comes from a config as an import path ``"module:factory"`` or ``"path/to/file.py:factory"``,
``factory()`` returning the environment (:func:`load_environment`), as reward functions do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from rlhfkit.envs.syntax import MalformedToolCall, ToolSyntax
from rlhfkit.envs.tools import Tool


@dataclass
class Turn:
    role: Literal["model", "environment"]
    text: str


@dataclass
class Conversation:
    """One episode so far: the prompt's text and the turns after it (model and environment alternating)."""

    prompt: str
    turns: list[Turn] = field(default_factory=list)

    @property
    def last_model_turn(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "model":
                return turn.text
        return ""

    @property
    def calls(self) -> int:
        """Observations so far (each answers one call)."""
        return sum(turn.role == "environment" for turn in self.turns)


class Observation(str):
    """An observation's text (a ``str``) that says whether it reports an error — for the tool metrics;
    an environment may return plain strings (counted as calls without error)."""

    is_error: bool = False

    def __new__(cls, text: str, is_error: bool = False) -> Observation:
        obs = super().__new__(cls, text)
        obs.is_error = is_error
        return obs


@runtime_checkable
class Environment(Protocol):
    def step(self, conversation: Conversation) -> str | None: ...


class ToolEnvironment:
    """Tools called in ``syntax``: ``step`` parses the last model turn; no call → None; a call → the tool's result
    (``syntax.format_result``); a problem → ``syntax.format_error`` with a one-sentence message. After
    ``max_calls`` calls in an episode, a further call is answered with an error."""

    def __init__(self, tools: Sequence[Tool], syntax: ToolSyntax, max_calls: int = 4) -> None:
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"two tools share a name: {names}")
        self.tools = {t.name: t for t in tools}
        self.syntax = syntax
        self.max_calls = max_calls

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.syntax.stop_strings)

    def schemas(self) -> list[dict]:
        """The tools' entries for a chat template's ``tools=``."""
        return [t.schema() for t in self.tools.values()]

    def step(self, conversation: Conversation) -> str | None:
        try:
            call = self.syntax.parse(conversation.last_model_turn)
        except MalformedToolCall as exc:
            return self.error(f"malformed tool call: {exc}")
        if call is None:
            return None
        if conversation.calls >= self.max_calls:
            return self.error(f"no more than {self.max_calls} tool calls per episode")
        found = self.tools.get(call.name)
        if found is None:
            return self.error(f"unknown tool {call.name!r} (tools: {', '.join(self.tools)})")
        arguments = call.arguments
        if call.raw is not None:  # FixedSyntax: the raw text is the single parameter's value
            if len(found.parameter_names) != 1:
                return self.error(f"{found.name} takes {len(found.parameter_names)} parameters, not one text")
            arguments = {found.parameter_names[0]: call.raw}
        try:
            found.check_arguments(arguments)
        except ValueError as exc:
            return self.error(str(exc))
        try:
            result = found(**arguments)
        except Exception as exc:  # a tool's failure is the model's information, not the run's end
            return self.error(f"{found.name} failed: {type(exc).__name__}: {exc}")
        return Observation(self.syntax.format_result(result))

    def error(self, message: str) -> Observation:
        return Observation(self.syntax.format_error(message), is_error=True)


def load_environment(spec: str, key: str = "rollout.environment") -> Any:
    """``factory()`` for ``spec`` = ``module:factory`` or ``path.py:factory``; ConfigError, one sentence naming
    ``key``, when the path does not resolve or the result has no ``step`` method."""
    from rlhfkit.config import ConfigError
    from rlhfkit.rewards.sources import load_reward_function

    try:
        factory = load_reward_function(spec)
    except ConfigError as exc:
        message = str(exc).replace("rewards: function", key, 1).replace("module:function or path.py:function",
                                                                        "module:factory or path.py:factory")
        raise ConfigError(message) from None
    environment = factory()
    if not callable(getattr(environment, "step", None)):
        raise ConfigError(f"{key} {spec!r}: {spec.rsplit(':', 1)[-1]}() returned "
                          f"{type(environment).__name__}, not an environment with a step(conversation) method")
    return environment


def tool_schemas(environment: Any) -> list[dict] | None:
    """The ``tools=`` a chat template lists for ``environment`` (docs/tools.md §2): its ``schemas()``; None for no
    environment, one without ``schemas`` (any object with ``step`` is an environment) or one with no tools — so a
    template's ``{% if tools %}`` and ``tools is not none`` agree that there are none."""
    schemas = getattr(environment, "schemas", None)
    return (schemas() or None) if callable(schemas) else None
