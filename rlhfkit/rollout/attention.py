"""How the generation engine calls the model's attention: the decode-step mask format, float32 attention
under a lower-precision autocast, and what the model's forward accepts.

- **A preallocated 4-D attention mask in the attention kernel's own format**, passed as is (the models use a
  4-D mask unchanged) instead of a 2-D mask grown by ``torch.cat`` and re-expanded at every step: boolean
  (True = attend) for ``sdpa``, additive (0 or the dtype's minimum, as ``transformers.masking_utils.eager_mask``
  builds it) for ``eager``, which *adds* the mask to the scores — a boolean mask added to scores masks nothing.
  Any other kernel (``flash_attention_2``/``3``, ``flex_attention``, hub kernels) takes ``model.generate``'s own
  path: ``DynamicCache`` and a 2-D mask, which transformers turns into what the kernel needs (FlashAttention
  un-pads by the 2-D mask's sequence lengths; it cannot read a (B, 1, 1, L) mask). :func:`decode_mask_format`
  makes that choice; the decoding loop in ``generate.py`` builds the mask.
- **Under a caller's bf16 autocast: bf16 matrix products, float32 attention** (:func:`float32_attention`), on
  the float32 preallocated cache: PyTorch's CPU attention kernel is several times slower in bf16 at one query
  per row.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

__all__ = ["cache_keyword", "decode_mask_format", "float32_attention", "forward_parameters"]

_FLOAT32_SDPA = "rlhfkit_sdpa_float32"  # the name our float32 sdpa kernel is registered under


def _sdpa_in_float32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention computed in float32 whatever the autocast: (B, H, q, D) inputs, output in
    the query's dtype. PyTorch's CPU attention kernel is several times slower in bf16 at one query per row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


def _register_float32_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_FLOAT32_SDPA, _sdpa_in_float32)
    AttentionMaskInterface.register(_FLOAT32_SDPA, sdpa_mask)


@contextmanager
def float32_attention(model, wanted: bool):
    """While decoding under a lower-precision autocast with our float32 KV cache, run the model's sdpa attention
    in float32 (the matrix products stay in the autocast dtype); the model's setting is restored after."""
    config = getattr(model, "config", None)
    if not wanted or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register_float32_sdpa()
    config._attn_implementation = _FLOAT32_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


# The decode-step mask each kernel takes with the preallocated cache; other kernels get DynamicCache + 2-D mask.
_MASK_FORMATS = {"sdpa": "boolean", "eager": "additive"}


def _attention_kernel(model) -> str:
    """The model's attention implementation (``eager`` where transformers leaves it unset, its default)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def decode_mask_format(model) -> str:
    """How the decode steps pass the attention mask: ``boolean`` or ``additive`` 4-D with the preallocated
    cache, or ``2d`` with ``DynamicCache`` — ``model.generate``'s own path, for every kernel whose mask format we
    do not build (FlashAttention un-pads by a 2-D mask) and for attention our cache does not implement."""
    kind = _MASK_FORMATS.get(_attention_kernel(model), "2d")
    return kind if _supports_preallocated_cache(model) else "2d"


def _supports_preallocated_cache(model) -> bool:
    """Our cache only implements full causal attention: sliding-window or hybrid models use DynamicCache."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return False
    return not (getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None))


def forward_parameters(model) -> set[str]:
    """The names of the arguments the model's forward takes (of the base model under PEFT)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap PEFT
    return set(inspect.signature(base.forward).parameters)


def cache_keyword(model) -> str:
    """``cache``, the name transformers ≥ 5.2x gives the KV-cache argument (``past_key_values`` is deprecated
    there, removal announced for 5.40), where the model's forward takes it; else ``past_key_values``."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"

