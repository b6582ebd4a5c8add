"""The generation engine's KV cache: one preallocated buffer per layer, written in place.

``DynamicCache`` grows by ``torch.cat`` at every step, reading and writing the whole cache again (three times
the memory traffic of attention itself). Here each layer's keys and values live in one buffer allocated at the
first step for prompt + max_new_tokens positions; a step writes one column and attends to a view of the filled
prefix, so attention sees exactly the values ``DynamicCache`` would have built, and the model's own attention
kernel runs on them (with ``drop_finished=False``, bitwise the same logits as ``model.generate``). Rows leave
the buffer when :func:`rlhfkit.rollout.generate.generate` drops finished rows (``batch_select_indices``).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["PreallocatedCache", "PreallocatedLayer"]


class PreallocatedLayer(DynamicLayer):
    """A cache layer holding keys/values in a (B, H_kv, capacity, D) buffer; returns views of the filled part.

    Behaves like ``DynamicLayer`` (same sequence length, same mask sizes, same returned tensors) without the
    ``torch.cat`` copy of the whole cache at every step.
    """

    def __init__(self, capacity: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.buffer_dtype = dtype  # None: the keys' own

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads = key_states.shape[:2]
        self.dtype, self.device = self.buffer_dtype or key_states.dtype, key_states.device
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]), dtype=self.dtype)
        self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]),
                                                   dtype=self.dtype)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.key_buffer[:, :, start:end].copy_(key_states)
        self.value_buffer[:, :, start:end].copy_(value_states)
        self.length = end
        self.keys = self.key_buffer[:, :, :end]  # (B, H_kv, L, D) view
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the generation cache is not croppable")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices``: copies their filled positions into a smaller buffer."""
        if not self.is_initialized:
            return
        end = self.length
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty((len(indices), *old.shape[1:]))
            new[:, :, :end] = old[indices, :, :end]
            setattr(self, name, new)
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("the generation cache does not repeat rows")


class PreallocatedCache(Cache):
    """A ``transformers`` Cache whose layers are :class:`PreallocatedLayer` of a fixed capacity (and dtype)."""

    def __init__(self, capacity: int, dtype: torch.dtype | None = None):
        super().__init__(layer_class_to_replicate=lambda: PreallocatedLayer(capacity, dtype))

