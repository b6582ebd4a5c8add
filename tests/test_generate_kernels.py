"""The generation engine under every attention kernel and architecture: each kernel gets a mask it reads
correctly at every decode step (issue 17, items 1–2), and the cache goes through the API transformers keeps.

Kernels run here: ``eager`` (adds the mask to the scores, so it needs an additive mask: a boolean one masks
nothing), ``sdpa`` (boolean mask), and a stand-in for FlashAttention-2 — a registered kernel whose mask is
transformers' ``flash_attention_mask`` (None or 2-D, for un-padding) and which refuses anything else, as
``flash_attention_2`` cannot read a (B, 1, 1, L) mask. The real ``flash_attention_2`` runs only on a GPU: see
``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from rlhfkit.models.load import set_attention
from rlhfkit.models.tiny import DROPOUT_ARCHS, tiny_config
from rlhfkit.rollout.attention import decode_mask_format
from rlhfkit.rollout.generate import generate, left_pad
from rlhfkit.rollout.sampling import sampling_logprobs

VOCAB = 96
PAD, BOS, EOS = 0, 1, 2
KERNELS = ("eager", "sdpa")
TWO_D_KERNEL = "rlhfkit_test_unpadding"  # the FlashAttention-2 stand-in (see module docstring)

torch.set_num_threads(1)


def build(arch: str, kernel: str, seed: int = 0):
    """A random micro model of ``arch`` running ``kernel``; OPT with dropout 0.1 (generation must switch it off).
    Weights with std 0.3 make greedy decoding wander instead of repeating one token."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, "micro", vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                         dropout=0.1 if arch == "opt" else 0.0)
    config.initializer_range = 0.3
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    return set_attention(model, kernel)  # as every stage switches kernels


def ragged_prompts(n: int = 6, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 14, (n,), generator=g).tolist()
    assert len(set(lengths)) > 2  # left padding of several widths
    return [[BOS] + torch.randint(3, VOCAB, (k - 1,), generator=g).tolist() for k in lengths]


def greedy(model, prompts, **kwargs):
    return generate(model, prompts, max_new_tokens=12, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                    return_logprobs=True, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_left_padding_never_changes_a_row(arch, kernel, dtype):
    """Batched (left-padded) vs one prompt at a time, greedy: the same tokens and log-probs. Before the fix eager
    attention saw the padding at every decode step (3e-2 nats on Llama, 7e-2 and other tokens on GPT-2).
    In float32 eager stays within 1e-5, sdpa within 5e-5: the CPU flash kernel splits a longer, padded key row
    differently — float64 shows that this is rounding and nothing else (≤ 1e-6: the log-probs are float32)."""
    if dtype == torch.float64 and kernel == "eager":
        pytest.skip("transformers' own eager forward gives NaN on left-padded float64 prompts (prefill, not ours)")
    model = build(arch, kernel).to(dtype)
    prompts = ragged_prompts()
    batched = greedy(model, prompts)
    tolerance = 1e-6 if dtype == torch.float64 else 1e-5 if kernel == "eager" else 5e-5
    for row, prompt in enumerate(prompts):
        alone = greedy(model, [prompt])
        assert torch.equal(alone.response_ids[0], batched.response_ids[row]), (arch, kernel, row)
        assert (alone.logprobs[0] - batched.logprobs[row]).abs().max() <= tolerance, (arch, kernel, row)
    assert model.config._attn_implementation == kernel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_greedy_equals_model_generate_bit_for_bit(arch, kernel):
    """Keeping finished rows, the engine runs the kernel on the values ``model.generate`` builds: the same
    tokens and bitwise the same log-probs, with the kernel's own mask format at every step."""
    model = build(arch, kernel)
    prompts = ragged_prompts(7, seed=3)
    ids, mask = left_pad(prompts, PAD)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                            eos_token_id=VOCAB + 1, pad_token_id=PAD, output_logits=True,
                            return_dict_in_generate=True)
    expected = hf.sequences[:, ids.shape[1]:]
    hf_logits = torch.stack(hf.logits, 1)  # (B, R, V)
    ours = greedy(model, prompts, drop_finished=False)
    assert torch.equal(ours.response_ids, expected)
    assert torch.equal(ours.logprobs, sampling_logprobs(hf_logits.flatten(0, 1), expected.flatten()).view_as(expected))


def _unpadding_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """FlashAttention-2's contract on the CPU: the mask is None (no padding) or the 2-D (B, L_kv) padding mask it
    un-pads by; causal attention with the query block at the end of the keys. Anything else is refused."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise AssertionError(f"a FlashAttention-style kernel got a {attention_mask.dim()}-D mask "
                             f"{tuple(attention_mask.shape)}; it un-pads by a 2-D mask")
    q_len, kv_len = query.shape[2], key.shape[2]
    rows = torch.arange(q_len)[:, None] + (kv_len - q_len)
    allowed = (torch.arange(kv_len)[None, :] <= rows)[None, None]  # (1, 1, q, kv)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -kv_len:].bool()
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padding queries: garbage, but never NaN
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_two_d_kernel() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(TWO_D_KERNEL, _unpadding_attention)
    AttentionMaskInterface.register(TWO_D_KERNEL, flash_attention_mask)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_kernel_that_unpads_gets_2d_masks_and_model_generates_cache(arch):
    """A kernel with no 4-D mask format we build (flash_attention_2, flex, hub kernels) decodes on
    ``model.generate``'s own path — DynamicCache and a 2-D mask — and gives the same tokens as sdpa."""
    _register_two_d_kernel()
    model = build(arch, TWO_D_KERNEL)
    assert decode_mask_format(model) == "2d"
    prompts = ragged_prompts(6, seed=5)
    out = greedy(model, prompts)  # the kernel raises if it ever gets a 4-D mask
    set_attention(model, "sdpa")
    reference = greedy(model, prompts)
    assert torch.equal(out.response_ids, reference.response_ids)
    assert (out.logprobs - reference.logprobs).abs().max() <= 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_generation_emits_no_deprecation_or_future_warning(kernel):
    """transformers 5.2x renamed the forward's ``past_key_values`` to ``cache`` (FutureWarning; removal announced
    for 5.40): the engine passes the name the installed transformers keeps, and nothing else it calls warns."""
    model = build("llama", kernel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        greedy(model, ragged_prompts())
        generate(model, ragged_prompts(), max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD,
                 generator=torch.Generator().manual_seed(0), drop_finished=True)
    bad = [f"{w.category.__name__}: {w.message}" for w in caught
           if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning))]
    assert not bad, bad
