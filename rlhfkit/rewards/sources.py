"""One reward interface for online RL: a list of weighted *sources*, each scoring every response.

A recipe lists them under ``rewards``::

    rewards:
      - {name: correct, function: rlhfkit.rewards.verifiable:exact_answer, weight: 1.0}
      - {name: rm, reward_model: runs/reward, weight: 0.5}
      - {name: mine, function: my_rewards.py:brevity}
      - {name: judge, judge: "lm:runs/sft/final", weight: 0.5}

- ``reward_model``: a reward-model folder (``rlhfkit reward`` output), read exactly as PPO's reward model
  (:class:`~rlhfkit.rollout.score.RewardModelScorer`: its normalised score; another tokenizer is fine, the
  response is then decoded and re-encoded).
- ``function``: ``module:function`` or ``path/to/file.py:function`` (TRL's reward-function convention, so
  existing functions move over), called once per rollout chunk as
  ``fn(prompts, completions, **columns) -> list[float | None]``: ``prompts`` as in the data (a string, or a
  list of ``{"role", "content"}`` dicts), ``completions`` the responses' text (without EOS), and every other
  column of the prompt rows (e.g. ``answer``) as a keyword argument holding one value per row (None where a row
  lacks it). Accept ``**kwargs`` for columns you do not use.
- ``judge``: ``lm:DIR``, a local causal LM (the ``rlhfkit label --judge lm:DIR`` judge) asked whether each
  response is good; its probability of "Yes", in [0, 1] (:mod:`rlhfkit.rewards.judge` says why that score).

**None means "no opinion"**: that source adds nothing to that response's score (e.g. a correctness reward on a
prompt without a checkable answer). The score is ``Σ_s weight_s · r_s`` over the sources with an opinion; a
response no source has an opinion on scores 0. A function that raises, returns a list of the wrong length, or
a value that is neither a finite number nor None stops the run with :class:`RewardFunctionError`, one sentence
naming the function and the row. Each source is logged as ``reward/<name>/mean`` and ``reward/<name>/std`` over
the responses it had an opinion on.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError
from rlhfkit.errors import UserError
from rlhfkit.rollout.experience import Rollout
from rlhfkit.rollout.score import assistant_contents, response_texts


@dataclass
class RewardSourceConfig:
    """One source of the reward: exactly one of ``function``, ``reward_model`` and ``judge``."""

    name: str = ""
    """Its metric name (``reward/<name>/mean``); empty = the function's name, or ``reward_model``."""
    function: str = ""
    """``module:function`` or ``path.py:function``: ``fn(prompts, completions, **columns) -> list[float | None]``."""
    reward_model: str = ""
    """A reward-model folder; its normalised score (read as ``reward_model.retokenize/template`` say)."""
    judge: str = ""
    """``lm:DIR``: a causal-LM folder asked "Is this response helpful, honest and harmless?"; the score is its
    probability of "Yes" (:mod:`rlhfkit.rewards.judge`)."""
    weight: float = 1.0
    """The source's weight in the summed score."""

    def validate(self) -> None:
        if sum(map(bool, (self.function, self.reward_model, self.judge))) != 1:
            raise ConfigError(f"rewards: each source needs exactly one of function, reward_model and judge "
                              f"(got function={self.function!r}, reward_model={self.reward_model!r}, "
                              f"judge={self.judge!r})")
        if self.judge:
            from rlhfkit.judges.spec import REWARD_JUDGES, parse_judge_spec

            try:
                parse_judge_spec(self.judge, REWARD_JUDGES)
            except ValueError as err:
                raise ConfigError(f"rewards: {err}") from None
        if not math.isfinite(self.weight):
            raise ConfigError(f"rewards: the weight of {self.display_name} must be a finite number")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.function:
            return self.function.rsplit(":", 1)[-1]
        return "judge" if self.judge else "reward_model"


class RewardFunctionError(UserError):
    """A reward function failed or returned something that is not one score per response."""


def load_reward_function(spec: str) -> Callable[..., Sequence[Any]]:
    """The function named by ``module:function`` or ``path/to/file.py:function``; ConfigError otherwise."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"rewards: function {spec!r} must be written module:function or path.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"rewards: function {spec!r}: no file {path}")
            loader_spec = importlib.util.spec_from_file_location(f"rlhfkit_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why
        raise ConfigError(f"rewards: function {spec!r}: importing {module_name} failed: {exc}") from exc
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ConfigError(f"rewards: function {spec!r}: {module_name} has no function {attribute!r}")
    return fn


def _prompt_for_function(prompt: Any) -> Any:
    if isinstance(prompt, str):
        return prompt
    return [{"role": m.role, "content": m.content} if hasattr(m, "role") else m for m in prompt]


def _columns(fields: Sequence[dict] | None, rows: int) -> dict[str, list]:
    """Per-row dicts → one list per column (None where a row lacks the column)."""
    fields = list(fields) if fields is not None else [{}] * rows
    names = dict.fromkeys(k for row in fields for k in row)
    return {name: [row.get(name) for row in fields] for name in names}


def checked_scores(spec: str, values: Any, prompts: Sequence[Any]) -> list[float | None]:
    """``values`` as one finite float or None per prompt, or RewardFunctionError naming ``spec`` and the row."""
    try:
        values = list(values)
    except TypeError:
        raise RewardFunctionError(f"reward function {spec} returned {type(values).__name__}, not a list of "
                                  f"{len(prompts)} scores") from None
    if len(values) != len(prompts):
        raise RewardFunctionError(f"reward function {spec} returned {len(values)} scores for {len(prompts)} "
                                  "responses (one per response expected)")
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None and isinstance(value, torch.Tensor) and value.numel() == 1:
            number = float(value)
        if number is None or not math.isfinite(number):
            raise RewardFunctionError(f"reward function {spec} returned {value!r} for row {i} of the chunk "
                                      f"(prompt {str(_prompt_for_function(prompts[i]))[:80]!r}); "
                                      "a score must be a finite number or None")
        out.append(number)
    return out


class RewardSources:
    """The weighted sources as a scorer. ``sources``: ``(name, weight, kind, callable)`` with kind
    ``"function"`` (``fn(prompts, completions, **columns)``), ``"judge"`` (called as a function; holds a model)
    or ``"scorer"`` (``scorer(prompts, rollout)`` → (B,) tensor, e.g. a reward model). ``tokenizer``/``template``/``eos_token_id``: the policy's, to turn
    responses into text."""

    def __init__(self, sources: Sequence[tuple[str, float, str, Any]], tokenizer, *, template: str | None = None,
                 eos_token_id: int | Sequence[int] | None = None, specs: Sequence[str] | None = None) -> None:
        names = [s[0] for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards: two sources share a name ({', '.join(names)}); give each a name")
        self.sources = list(sources)
        self.specs = list(specs) if specs is not None else names
        self.tokenizer, self.template, self.eos_token_id = tokenizer, template, eos_token_id

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.sources]

    def score(self, prompts: Sequence[Any], rollout: Rollout,
              fields: Sequence[dict] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(scores (B,), {name: (B,) with nan where the source had no opinion})``."""
        rows = rollout.batch_size
        if len(prompts) != rows:
            raise ValueError(f"{len(prompts)} prompts for a rollout of {rows} rows")
        completions = None
        total = torch.zeros(rows, dtype=torch.float32)
        per_source = {}
        for (name, weight, kind, source), spec in zip(self.sources, self.specs):
            if kind == "scorer":
                values = source(prompts, rollout).detach().float().cpu()
            else:
                if completions is None:
                    texts = response_texts(self.tokenizer, rollout, self.eos_token_id)
                    completions = assistant_contents(self.tokenizer, prompts, texts, self.template)
                shown = [_prompt_for_function(p) for p in prompts]
                try:
                    returned = source(shown, list(completions), **_columns(fields, rows))
                except RewardFunctionError:
                    raise
                except Exception as exc:
                    raise RewardFunctionError(f"reward function {spec} raised {type(exc).__name__}: {exc} "
                                              f"(on a chunk of {rows} responses, first prompt "
                                              f"{str(shown[0])[:80]!r})") from exc
                scores = checked_scores(spec, returned, prompts)
                values = torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)
            per_source[name] = values
            total += torch.nan_to_num(weight * values, nan=0.0)
        return total, per_source

    def __call__(self, prompts: Sequence[Any], rollout: Rollout) -> torch.Tensor:
        return self.score(prompts, rollout)[0]


def source_metrics(per_source: dict[str, torch.Tensor]) -> dict[str, float]:
    """``reward/<name>/mean`` and ``/std`` over the responses each source had an opinion on (nan-free rows),
    and ``reward/<name>/opinion_rate`` (share of responses it scored)."""
    out = {}
    for name, values in per_source.items():
        scored = values[~torch.isnan(values)]
        out[f"reward/{name}/mean"] = float(scored.mean()) if len(scored) else 0.0
        out[f"reward/{name}/std"] = float(scored.std(unbiased=False)) if len(scored) else 0.0
        out[f"reward/{name}/opinion_rate"] = len(scored) / max(len(values), 1)
    return out
