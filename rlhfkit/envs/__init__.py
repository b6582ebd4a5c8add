"""Environments and tools for multi-turn episodes (docs/tools.md): a model turn, an observation, a model turn…

- :mod:`rlhfkit.envs.tools`: :class:`Tool` (a plain Python function with a name and a JSON-schema signature) and
  the :func:`tool` decorator that builds it from the function's signature and docstring;
- :mod:`rlhfkit.envs.syntax`: how a model writes a call and reads its result (:class:`FixedSyntax`,
  :class:`JsonSyntax`);
- :mod:`rlhfkit.envs.environment`: :class:`Environment` (``step(conversation) -> observation | None``) and
  :class:`ToolEnvironment`; :func:`load_environment` for ``module:factory`` paths; :func:`tool_schemas`
  for a chat template's ``tools=``;
- :mod:`rlhfkit.envs.episodes`: the episode runner over :func:`rlhfkit.rollout.generate.generate`.

Imports no torch except the episode runner.
"""

from rlhfkit.envs.environment import (
    Conversation,
    Environment,
    Observation,
    ToolEnvironment,
    Turn,
    load_environment,
    tool_schemas,
)
from rlhfkit.envs.syntax import FixedSyntax, JsonSyntax, MalformedToolCall, ToolCall, ToolSyntax
from rlhfkit.envs.tools import Tool, tool

__all__ = ["Conversation", "Environment", "FixedSyntax", "JsonSyntax", "MalformedToolCall", "Observation", "Tool",
           "ToolCall", "ToolEnvironment", "ToolSyntax", "Turn", "load_environment", "tool", "tool_schemas"]
