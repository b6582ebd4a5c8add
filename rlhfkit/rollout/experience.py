"""The rollout: one typed record of a PPO batch, filled stage by stage, then cut into minibatches.

Imports only torch and the standard library.

Vocabulary (STYLE.md 5): the *score* is the reward model's output for a whole response; *rewards* are
per-token, score − β·KL; then *values*, *advantages*, *returns*. ``B`` is the number of rollouts (prompt +
response pairs), ``P`` the padded prompt length, ``T`` the padded response length. Prompts are left-padded,
responses right-padded; ``response_mask`` is 1 on every response token up to and including EOS.
A multi-turn episode (:mod:`rlhfkit.envs`) also has ``env_mask`` (B, T), 1 on the environment's tokens inside
the response: context for every forward, never an action; ``action_mask = response_mask · (1 − env_mask)``.

The generation stage fills the first five fields; the PPO step fills the others as it goes
(score → ref_logprobs, values → kl, rewards → advantages, returns) — a field that is not computed yet is
None, and :meth:`Rollout.validate` checks every field that is present.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

# field name → shape kind: "BP" (B, P), "BT" (B, T), "B" (B,)
_SHAPES = {
    "query_ids": "BP", "query_mask": "BP", "response_ids": "BT", "response_mask": "BT",
    "logprobs": "BT", "ref_logprobs": "BT", "values": "BT", "scores": "B", "kl": "BT",
    "rewards": "BT", "advantages": "BT", "returns": "BT", "keep": "B", "env_mask": "BT",
}
_INTEGER_FIELDS = ("query_ids", "query_mask", "response_ids", "response_mask", "env_mask")


class NonFiniteRollout(ValueError):
    """A rollout whose only problem is non-finite values (diverged weights), not a malformed one (a bug)."""


@dataclass
class Rollout:
    """A batch of B sampled responses and everything PPO computes about them (see module docstring)."""

    query_ids: torch.Tensor  # (B, P) long: prompt token ids, left-padded
    query_mask: torch.Tensor  # (B, P) 0/1: 1 = prompt token, 0 = left padding
    response_ids: torch.Tensor  # (B, T) long: sampled response ids a_t, right-padded
    response_mask: torch.Tensor  # (B, T) 0/1: 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T) float: log π_θold(a_t | s_t), the policy that sampled (temperature-scaled)
    ref_logprobs: torch.Tensor | None = None  # (B, T) float: log π_ref(a_t | s_t) under the frozen reference
    values: torch.Tensor | None = None  # (B, T) float: V(s_t), the value model's estimate before token t
    scores: torch.Tensor | None = None  # (B,) float: reward-model score of each whole response (normalised)
    kl: torch.Tensor | None = None  # (B, T) float: per-token KL estimate, logprobs − ref_logprobs
    rewards: torch.Tensor | None = None  # (B, T) float: −β·kl per token, + score on the last response token
    advantages: torch.Tensor | None = None  # (B, T) float: GAE(γ, λ) advantages A_t (whitened by the trainer)
    returns: torch.Tensor | None = None  # (B, T) float: value targets, advantages + values (before whitening)
    keep: torch.Tensor | None = None  # (B,) float 1/0: the update learns from the row (0: dropped by a filter)
    # (B, T) 0/1: 1 = an environment token (a tool's observation in a multi-turn episode, rlhfkit.envs): inside
    # response_mask, read as context by every forward, but never an action — no loss, KL, advantage, entropy or
    # token count (see `action_mask`). None = single-turn: every response token is the model's.
    env_mask: torch.Tensor | None = None

    # ---- sizes -----------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.response_ids.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: response tokens per row, EOS included."""
        return self.response_mask.long().sum(dim=1)

    @property
    def action_mask(self) -> torch.Tensor:
        """(B, T): 1 on the model's own response tokens — ``response_mask`` without the environment tokens.
        Every loss, KL, advantage, entropy and token count uses this mask; forwards use ``response_mask``."""
        if self.env_mask is None:
            return self.response_mask
        return self.response_mask * (1 - self.env_mask.to(self.response_mask.dtype))

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P + T) ids and attention mask of query ⧺ response, as fed to a forward pass."""
        ids = torch.cat([self.query_ids, self.response_ids], dim=1)
        mask = torch.cat([self.query_mask.long(), self.response_mask.long()], dim=1)
        return ids, mask

    def present_fields(self) -> dict[str, torch.Tensor]:
        """The fields computed so far, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    # ---- checks ----------------------------------------------------------------------------------------

    def validate(self) -> Rollout:
        """Check shapes, dtypes and masks of every present field; raise ValueError listing all problems.

        Checked: each field is (B, P), (B, T) or (B,) as documented, with one B, P, T; ids are integers;
        masks are 0/1, the query mask left-padded and the response mask right-padded (1…1 0…0), every row
        with at least one prompt and one response token; float fields finite where the response mask is 1;
        log-probabilities ≤ 0 there. Returns self, so ``Rollout(...).validate()`` chains.
        """
        problems: list[str] = []
        batch, prompt_len = self.query_ids.shape[:2] if self.query_ids.dim() == 2 else (-1, -1)
        response_len = self.response_ids.shape[1] if self.response_ids.dim() == 2 else -1
        expected = {"BP": (batch, prompt_len), "BT": (batch, response_len), "B": (batch,)}
        fields = self.present_fields()
        for name, tensor in fields.items():
            if tuple(tensor.shape) != expected[_SHAPES[name]]:
                problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {expected[_SHAPES[name]]} "
                                f"({_SHAPES[name]} with B={batch}, P={prompt_len}, T={response_len})")
        if problems:  # the content checks below assume the shapes
            raise ValueError("invalid rollout: " + "; ".join(problems))
        problems += _check_ids_and_masks(self)
        nonfinite: list[str] = []
        valid = self.action_mask.bool()  # environment tokens carry no log-prob, KL or advantage
        for name, tensor in fields.items():
            if name in _INTEGER_FIELDS:
                continue
            if not tensor.is_floating_point():
                problems.append(f"{name} must be floating point, got {tensor.dtype}")
                continue
            if _SHAPES[name] == "B":  # scores, keep: one number per row
                if not torch.isfinite(tensor).all():
                    nonfinite.append(f"{name} has non-finite entries")
                continue
            if not torch.isfinite(tensor[valid]).all():
                nonfinite.append(f"{name} has non-finite entries inside the response mask")
            if name in ("logprobs", "ref_logprobs") and (tensor[valid] > 1e-4).any():
                problems.append(f"{name} has positive entries: a log-probability is ≤ 0")
        problems += _check_env_mask(self)
        if problems:
            raise ValueError("invalid rollout: " + "; ".join(problems + nonfinite))
        if nonfinite:
            raise NonFiniteRollout("invalid rollout: " + "; ".join(nonfinite))
        return self

    # ---- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_generation(cls, generation, logprobs: torch.Tensor | None = None) -> Rollout:
        """Start a rollout from a ``rlhfkit.rollout.generate.GenerationOutput`` (duck-typed: no import).

        ``logprobs`` overrides the generation's own sampling log-probs (PPO recomputes them with a forward
        pass in training numerics, so the ratio is exactly 1 at the first epoch).
        """
        chosen = generation.logprobs if logprobs is None else logprobs
        if chosen is None:
            raise ValueError("no logprobs: pass return_logprobs=True to generate, or logprobs= here")
        return cls(query_ids=generation.prompt_ids, query_mask=generation.prompt_mask,
                   response_ids=generation.response_ids, response_mask=generation.response_mask, logprobs=chosen,
                   env_mask=getattr(generation, "env_mask", None))  # an EpisodeOutput has one

    def replace(self, **changes: torch.Tensor | None) -> Rollout:
        """A copy with some fields set (e.g. ``rollout.replace(scores=s, values=v)``); tensors are shared."""
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every present tensor on ``device``."""
        return self.replace(**{name: t.to(device) for name, t in self.present_fields().items()})

    def index_select(self, indices: torch.Tensor | Sequence[int]) -> Rollout:
        """The sub-rollout of rows ``indices`` (in that order), every present field sliced alike."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.replace(**{n: t.index_select(0, index.to(t.device)) for n, t in self.present_fields().items()})

    def trimmed(self) -> Rollout:
        """The same rows without the padding columns no row needs: leading query columns and trailing response
        columns that are padding in every row. Fewer positions to compute; each row's tokens, masks and
        per-token values unchanged."""
        first = int(self.query_mask.bool().any(dim=0).long().argmax())  # first column some row has a token in
        last = int(self.response_mask.bool().any(dim=0).nonzero().max()) + 1 if self.response_mask.any() else 0
        cut = {"BP": lambda t: t[:, first:], "BT": lambda t: t[:, :last], "B": lambda t: t}
        return self.replace(**{n: cut[_SHAPES[n]](t) for n, t in self.present_fields().items()})

    def length_groups(self, size: int) -> Iterator[tuple[torch.Tensor, Rollout]]:
        """Rows sorted by query length, in groups of ``size``: ``(row indices (b,), trimmed sub-rollout)``.

        For forward passes whose rows are independent (reference, reward and value models): rows of similar
        prompt length share a group, so :meth:`trimmed` drops most of the left padding. The order is stable.
        """
        if size < 1:
            raise ValueError(f"group size must be ≥ 1, got {size}")
        order = torch.sort(self.query_mask.long().sum(dim=1).cpu(), stable=True).indices
        for start in range(0, self.batch_size, size):
            rows = order[start : start + size]
            yield rows, self.index_select(rows).trimmed()

    def minibatches(self, size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True) -> Iterator[Rollout]:
        """Yield sub-rollouts of ``size`` rows covering every row exactly once; the last may be smaller.

        Rows are shuffled by ``torch.randperm(B, generator=generator)`` (consumes that generator only; the
        global one if None), so the same generator state gives the same minibatches — resumable.
        """
        if size < 1:
            raise ValueError(f"minibatch size must be ≥ 1, got {size}")
        order = torch.randperm(self.batch_size, generator=generator) if shuffle else torch.arange(self.batch_size)
        for start in range(0, self.batch_size, size):
            yield self.index_select(order[start : start + size])

    @classmethod
    def cat(cls, rollouts: Sequence[Rollout]) -> Rollout:
        """Concatenate rollouts along the batch, re-padding queries (left) and responses (right) to a common width.

        Fields must be present in all parts or in none.
        """
        if not rollouts:
            raise ValueError("Rollout.cat needs at least one rollout")
        names = list(rollouts[0].present_fields())
        for part in rollouts:
            if list(part.present_fields()) != names:
                raise ValueError(f"cannot concatenate rollouts with different fields: {names} vs "
                                 f"{list(part.present_fields())}")
        width_p = max(r.query_ids.shape[1] for r in rollouts)
        width_t = max(r.response_ids.shape[1] for r in rollouts)
        merged = {}
        for name in names:
            kind = _SHAPES[name]
            pieces = []
            for part in rollouts:
                t = getattr(part, name)
                if kind == "BP":
                    t = torch.nn.functional.pad(t, (width_p - t.shape[1], 0))  # left padding; pad id irrelevant
                elif kind == "BT":
                    t = torch.nn.functional.pad(t, (0, width_t - t.shape[1]))
                pieces.append(t)
            merged[name] = torch.cat(pieces, dim=0)
        return cls(**merged)


def _check_env_mask(rollout: Rollout) -> list[str]:
    """Problems with ``env_mask``: 0/1, only on response tokens, and every row keeps a model token."""
    env = rollout.env_mask
    if env is None:
        return []
    if env.is_floating_point() or not ((env == 0) | (env == 1)).all():
        return ["env_mask must be 0/1 integers"]
    if (env.bool() & ~rollout.response_mask.bool()).any():
        return ["env_mask has environment tokens outside response_mask"]
    if (rollout.action_mask.sum(dim=1) == 0).any():
        return [f"env_mask row {int((rollout.action_mask.sum(dim=1) == 0).nonzero()[0])} has no model token"]
    return []


def _check_ids_and_masks(rollout: Rollout) -> list[str]:
    """Problems with the id dtypes and the padding structure of the two masks (empty list if none)."""
    problems = []
    for name in ("query_ids", "response_ids"):
        tensor = getattr(rollout, name)
        if tensor.is_floating_point() or tensor.dtype == torch.bool:
            problems.append(f"{name} must hold integer token ids, got {tensor.dtype}")
    for name, padding_side in (("query_mask", "left"), ("response_mask", "right")):
        mask = getattr(rollout, name)
        if not ((mask == 0) | (mask == 1)).all():
            problems.append(f"{name} must be 0/1")
            continue
        steps = mask.long().diff(dim=1)  # left padding: 0…0 1…1 never steps down; right padding never up
        bad_rows = (steps < 0 if padding_side == "left" else steps > 0).any(dim=1)
        if bad_rows.any():
            row = int(bad_rows.nonzero()[0])
            problems.append(f"{name} is not {padding_side}-padded (row {row}: {mask[row].tolist()})")
        empty = mask.long().sum(dim=1) == 0
        if empty.any():
            problems.append(f"{name} row {int(empty.nonzero()[0])} has no token")
    return problems
