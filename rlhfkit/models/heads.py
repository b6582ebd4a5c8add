"""Scalar heads: scores at the last real token, per-token values, score normalisation, a policy value head.

Reward and value models are the architecture's own ``*ForSequenceClassification`` (``num_labels=1``): a
trunk and a linear ``score`` head. We never use its pooled output: plain transformers picks the rightmost
token whose id differs from ``pad_token_id`` and computes positions without the mask. We read the trunk's
hidden states (positions from the mask, see :mod:`rlhfkit.models.forward`) and apply the head ourselves
at the last token the *attention mask* marks as real.

Score normalisation (lm-human-preferences; Ziegler et al. 2019, §2.2): after reward training the score is
``normalized = gain · raw + bias`` with gain/bias chosen so reference responses average 0 (and optionally
have unit std). The gain is folded into the head's weight (``w ← gain · w``), so plain
``AutoModelForSequenceClassification`` returns the scaled score; the bias is folded into the head's bias
where the head has one. Every ``*ForSequenceClassification`` head in transformers is bias-free, and no
weight of an RMSNorm trunk (Llama, Qwen2, …) can add a constant to a linear readout, so there the bias
stays a constant *score offset* (config key ``rlhfkit_score_offset``, also written to the folder's
``rlhfkit_reward.json``): rlhfkit's *centred* score is plain transformers' score + offset. Folders written
before folding (``rlhfkit_score_gain``/``rlhfkit_score_bias`` in the config) are still read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from rlhfkit.models.forward import (
    capture_trunk_output,
    forward_logits,
    last_token_index,
    query_response_forward,
    supports_query_cache,
    trunk_hidden_states,
    trunk_of,
    unwrap_model,
)
from rlhfkit.ops import distinct_rows

OFFSET_KEY = "rlhfkit_score_offset"
GAIN_KEY = "rlhfkit_score_gain"  # legacy: folders saved before the gain was folded into the head
BIAS_KEY = "rlhfkit_score_bias"  # legacy: now OFFSET_KEY


def scalar_head(model) -> nn.Module:
    """The linear ``score`` head of a ``*ForSequenceClassification`` model (possibly PEFT-wrapped)."""
    inner = unwrap_model(model)
    head = getattr(inner, "score", None)
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no 'score' head; expected a *ForSequenceClassification model")
    return head


def _head_linear(head: nn.Module) -> nn.Linear:
    # PEFT wraps a trainable head as ModulesToSaveWrapper(original_module=…, modules_to_save=…).
    active = getattr(head, "modules_to_save", None)
    if active is not None:
        return next(iter(active.values()))
    return head


def reward_head_init_std(hidden_size: int) -> float:
    """lm-human-preferences' scalar-head init: weights ~ N(0, 1/√(d_model + 1)), bias 0."""
    return 1.0 / math.sqrt(hidden_size + 1)


def init_scalar_head(head: nn.Linear, std: float, seed: int = 0) -> None:
    """Weights ~ N(0, std²) (std 0 gives zeros, lm-human-preferences' value head), bias 0; seeded."""
    linear = _head_linear(head)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sample = torch.randn(linear.weight.shape, generator=generator, dtype=torch.float32) * std
        linear.weight.copy_(sample.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.zero_()


def score_sequences(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw score of each sequence: ``r = w · h_last (+ b)`` at the last real token. (B, T) -> (B,) float32.

    ``h_last`` is the trunk's final hidden state at the last position where ``attention_mask`` is 1, with
    position ids from the mask: identical for left and right padding, and correct when pad == EOS.
    """
    hidden = trunk_hidden_states(model, input_ids, attention_mask)  # (B, T, H)
    last = last_token_index(attention_mask)  # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return scalar_head(model)(hidden[rows, last]).squeeze(-1).float()  # (B,)


@torch.no_grad()
def score_query_response(model, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                         response_mask: torch.Tensor) -> torch.Tensor:
    """:func:`score_sequences` of query ⧺ response, with a query that occurs several times (GRPO's group)
    forwarded once (:func:`~rlhfkit.models.forward.query_response_forward`); equal to the full forward to float
    rounding. (B, P) left-padded queries, (B, T) right-padded responses -> (B,) float32. Without gradient."""
    repeated = distinct_rows(query_ids, query_mask)
    trunk = trunk_of(model)
    if repeated is None or not supports_query_cache(trunk) or not response_mask.bool().any(1).all():
        return score_sequences(model, torch.cat([query_ids, response_ids], 1),
                               torch.cat([query_mask, response_mask], 1))
    _, out = query_response_forward(trunk, query_ids, query_mask, response_ids, response_mask, *repeated)
    hidden = out.last_hidden_state  # (B, T, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return scalar_head(model)(hidden[rows, last_token_index(response_mask)]).squeeze(-1).float()  # (B,)


def get_score_normalization(model) -> tuple[float, float]:
    """``(gain, offset)`` still applied on top of the head's output: ``normalized = gain · score + offset``.

    ``(1.0, offset)`` once :func:`set_score_normalization` has folded the gain into the head; a legacy folder
    may still carry a gain. ``(1.0, 0.0)`` if never set.
    """
    config = unwrap_model(model).config
    offset = getattr(config, OFFSET_KEY, None)
    if offset is None:
        offset = getattr(config, BIAS_KEY, 0.0)
    return float(getattr(config, GAIN_KEY, 1.0)), float(offset)


def set_score_normalization(model, gain: float, bias: float) -> None:
    """Make the score ``gain · score + bias`` from now on (on top of any normalisation already applied).

    ``gain`` (and ``bias`` where the head has a bias) is folded into the head, so plain transformers returns
    it; a bias the head cannot hold becomes the config's score offset (saved by ``save_pretrained``; see the
    module docstring). The scores :func:`normalized_scores` gives change exactly as stated.
    """
    if not (math.isfinite(gain) and math.isfinite(bias)):
        raise ValueError(f"score normalisation must be finite, got gain={gain}, bias={bias}")
    old_gain, old_offset = get_score_normalization(model)
    linear = _head_linear(scalar_head(model))
    with torch.no_grad():
        linear.weight.copy_((linear.weight.double() * gain).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.double() * gain + bias).to(linear.bias.dtype))
    # gain · (old_gain · s + old_offset) + bias, with s now already multiplied by gain inside the head
    offset = gain * old_offset + (0.0 if linear.bias is not None else bias)
    config = unwrap_model(model).config
    for key in (GAIN_KEY, BIAS_KEY):
        if hasattr(config, key):
            delattr(config, key)
    if old_gain != 1.0:
        setattr(config, GAIN_KEY, float(old_gain))
    setattr(config, OFFSET_KEY, float(offset))


def normalization_from_scores(reference_scores: torch.Tensor, target_std: float | None = None,
                              target_mean: float = 0.0) -> tuple[float, float]:
    """Gain and bias that map ``reference_scores`` (raw, (N,)) to mean ``target_mean`` (and std ``target_std``).

    ``gain = target_std / std(raw)`` (1 when ``target_std`` is None), ``bias = target_mean − gain · mean(raw)``.
    """
    scores = reference_scores.detach().double().flatten()
    if scores.numel() == 0:
        raise ValueError("need at least one reference score to normalise")
    gain = 1.0
    if target_std is not None:
        std = scores.std(unbiased=False).item() if scores.numel() > 1 else 0.0
        if std <= 0:
            raise ValueError("reference scores have zero spread; cannot normalise to a target std")
        gain = target_std / std
    return gain, target_mean - gain * scores.mean().item()


def normalized_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``gain · score_sequences(…) + bias`` with the model's stored normalisation. (B, T) -> (B,)."""
    gain, bias = get_score_normalization(model)
    return gain * score_sequences(model, input_ids, attention_mask) + bias


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 normalized: bool = True) -> torch.Tensor:
    """Head output at every position: ``values[b, t] = V(x_{≤t})`` from hidden state t. (B, T) -> (B, T).

    State-aligned: ``values[:, t]`` has read tokens ``0..t``. A value model initialised from a reward model
    therefore starts with ``values[b, last] == score`` (normalised with the stored gain/bias when
    ``normalized``, so its initial predictions are on the scale of the rewards it must predict). For PPO,
    where position t is the action "emit token t", use :func:`rlhfkit.models.policy.values_for_actions`.
    """
    hidden = trunk_hidden_states(model, input_ids, attention_mask)  # (B, T, H)
    values = scalar_head(model)(hidden).squeeze(-1).float()  # (B, T)
    if normalized:
        gain, bias = get_score_normalization(model)
        values = gain * values + bias
    return values


VALUE_HEAD_WEIGHTS = "value_head.safetensors"
VALUE_HEAD_CONFIG = "value_head.json"


class PolicyWithValueHead(nn.Module):
    """A causal LM (plain or PEFT) plus a linear value head on its trunk: one forward, logits and values.

    The value head reads the same final hidden state as the LM head (lm-human-preferences' ``value``
    scalar head, zero-initialised there: ``head_init_std=0``). ``save_pretrained`` writes the policy as a
    standard folder (or adapter folder) that plain transformers / peft load, plus ``value_head.safetensors``
    beside it, which they ignore.
    """

    def __init__(self, policy, value_head: nn.Linear | None = None, head_init_std: float = 0.0, seed: int = 0):
        super().__init__()
        self.policy = policy
        if value_head is None:
            inner = unwrap_model(policy)
            hidden = inner.config.get_text_config().hidden_size
            value_head = nn.Linear(hidden, 1, dtype=next(inner.parameters()).dtype)
            init_scalar_head(value_head, head_init_std, seed)
        self.value_head = value_head

    @property
    def config(self):
        return unwrap_model(self.policy).config

    def generate(self, *args, **kwargs):
        return self.policy.generate(*args, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                logits_to_keep: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T, V) or (B, K, V) with logits_to_keep, state values (B, T) float32)``.

        Position ids come from the mask; ``values[:, t]`` is V(x_{≤t}) as in :func:`token_values`.
        """
        with capture_trunk_output(self.policy) as captured:
            logits = forward_logits(self.policy, input_ids, attention_mask, logits_to_keep)
        values = self.value_head(captured["hidden"]).squeeze(-1).float()  # (B, T)
        return logits, values

    def save_pretrained(self, out_dir: str | Path, merge: bool = True, tokenizer=None,
                        base_model_path: str | Path | None = None) -> Path:
        """Policy via :func:`rlhfkit.models.lora.save_policy`, plus the value head beside it."""
        from safetensors.torch import save_file

        from rlhfkit.models.lora import save_policy

        out = save_policy(self.policy, out_dir, merge=merge, tokenizer=tokenizer, base_model_path=base_model_path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(out / VALUE_HEAD_WEIGHTS))
        (out / VALUE_HEAD_CONFIG).write_text(json.dumps({"in_features": self.value_head.in_features,
                                                         "bias": self.value_head.bias is not None}))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, **load_kwargs) -> PolicyWithValueHead:
        """Load a folder written by :meth:`save_pretrained` (a merged or an adapter policy folder)."""
        from safetensors.torch import load_file

        from rlhfkit.models.load import ModelLoadError, load_causal_lm

        folder = Path(path)
        policy = load_causal_lm(folder, dtype, **load_kwargs)
        if not (folder / VALUE_HEAD_WEIGHTS).is_file():
            raise ModelLoadError(f"'{folder.resolve()}' has no {VALUE_HEAD_WEIGHTS}: it is a policy without a value head.")
        spec = json.loads((folder / VALUE_HEAD_CONFIG).read_text())
        head = nn.Linear(spec["in_features"], 1, bias=spec["bias"], dtype=next(policy.parameters()).dtype)
        head.load_state_dict(load_file(str(folder / VALUE_HEAD_WEIGHTS)))
        return cls(policy, value_head=head)


__all__ = [
    "BIAS_KEY", "GAIN_KEY", "OFFSET_KEY", "PolicyWithValueHead", "get_score_normalization", "init_scalar_head",
    "normalization_from_scores", "normalized_scores", "reward_head_init_std",
    "scalar_head", "score_sequences", "set_score_normalization", "token_values",
]
