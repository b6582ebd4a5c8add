"""Padding-safe forwards and policy log-probs, checked against independent per-sequence computations."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.models.forward import forward_logits, last_token_index, position_ids_from_mask
from rlhfkit.models.policy import (
    query_response_logprobs,
    response_logprobs,
    response_logprobs_and_entropy,
    response_span,
    values_for_actions,
)

try:
    from test_models_common import arch_model, encode, model_for, pad_batch, real_positions  # noqa: F401 (fixture)
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import arch_model, encode, model_for, pad_batch, real_positions  # noqa: F401 (fixture)




def test_position_ids_hand_worked():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    expected = torch.tensor([[0, 1, 2, 3, 3], [0, 0, 0, 1, 2], [0, 0, 1, 2, 3]])
    assert torch.equal(position_ids_from_mask(mask), expected)
    assert torch.equal(position_ids_from_mask(mask.bool()), expected)


def test_last_token_index_by_mask_not_by_id():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 0]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_left_and_right_padding_give_identical_logits_for_real_tokens(arch_model):
    arch, model = arch_model
    rows = encode(arch)
    right_ids, right_mask = pad_batch(rows, pad_id=0, side="right")
    left_ids, left_mask = pad_batch(rows, pad_id=0, side="left")
    with torch.no_grad():
        right = forward_logits(model, right_ids, right_mask)
        left = forward_logits(model, left_ids, left_mask)
        for b, row in enumerate(rows):  # independent reference: each sequence alone, no padding at all
            alone = model(input_ids=torch.tensor([row])).logits[0]
            torch.testing.assert_close(right[b, real_positions(right_mask, b)], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(left[b, real_positions(left_mask, b)], alone, atol=1e-5, rtol=1e-5)


def test_without_mask_positions_gpt2_left_padding_is_wrong():
    """Why forward_logits exists: plain HF positions shift a left-padded GPT-2 row (absolute positions)."""
    model = model_for("gpt2")
    rows = encode("gpt2")
    ids, mask = pad_batch(rows, pad_id=0, side="left")
    b = min(range(len(rows)), key=lambda i: len(rows[i]))  # the most padded row
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([rows[b]])).logits[0]
        plain = model(input_ids=ids, attention_mask=mask).logits[b, real_positions(mask, b)]
    assert (plain - alone).abs().max() > 1e-3


def test_forward_logits_keeps_only_requested_positions(arch_model):
    arch, model = arch_model
    ids, mask = pad_batch(encode(arch), pad_id=0, side="right")
    keep = torch.tensor([1, 2, 4])
    with torch.no_grad():
        full = forward_logits(model, ids, mask)
        some = forward_logits(model, ids, mask, logits_to_keep=keep)
    torch.testing.assert_close(some, full[:, keep])


def _prompt_response_rows(arch):
    rows = encode(arch)
    prompts = [r[: max(1, len(r) // 2)] for r in rows]
    return rows, [len(p) for p in prompts]


def _loop_logprobs(model, row, prompt_len, temperature):
    """Reference: one sequence, no padding, explicit log_softmax at each response position."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0] / temperature
    logp = torch.log_softmax(logits.double(), dim=-1)
    out_lp, out_h = [], []
    for t in range(prompt_len, len(row)):
        out_lp.append(logp[t - 1, row[t]].item())
        out_h.append(-(logp[t - 1].exp() * logp[t - 1]).sum().item())
    return out_lp, out_h


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_a_loop(arch_model, side, temperature):
    arch, model = arch_model
    rows, prompt_lens = _prompt_response_rows(arch)
    ids, mask = pad_batch(rows, pad_id=0, side=side)
    response = torch.zeros_like(mask)
    for b, p in enumerate(prompt_lens):
        response[b, real_positions(mask, b)[p:]] = 1
    with torch.no_grad():
        logprobs, entropy = response_logprobs_and_entropy(model, ids, mask, response, temperature)
        only = response_logprobs(model, ids, mask, response, temperature)
    assert logprobs.shape == ids.shape and torch.equal(logprobs, only)
    assert torch.all(logprobs[response == 0] == 0) and torch.all(entropy[response == 0] == 0)
    for b, (row, p) in enumerate(zip(rows, prompt_lens)):
        expected_lp, expected_h = _loop_logprobs(model, row, p, temperature)
        cols = response[b].nonzero().flatten()
        torch.testing.assert_close(logprobs[b, cols].double(), torch.tensor(expected_lp, dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[b, cols].double(), torch.tensor(expected_h, dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5)


def test_response_logprobs_is_differentiable():
    model = model_for("llama")
    rows, prompt_lens = _prompt_response_rows("llama")
    ids, mask = pad_batch(rows, pad_id=0, side="right")
    response = mask.clone()
    response[:, 0] = 0
    response_logprobs(model, ids, mask, response).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_response_span_and_errors():
    assert response_span(torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])) == (1, 4)
    with pytest.raises(ValueError, match="no token"):
        response_span(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="position 0"):
        response_span(torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="temperature"):
        model = model_for("gpt2")
        response_logprobs(model, torch.tensor([[5, 6, 7]]), torch.ones(1, 3), torch.tensor([[0, 1, 1]]), 0.0)


def test_values_for_actions_shifts_by_one():
    state = torch.tensor([[10.0, 11.0, 12.0, 13.0], [20.0, 21.0, 22.0, 23.0]])
    response = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    expected = torch.tensor([[0.0, 10.0, 11.0, 0.0], [0.0, 0.0, 21.0, 22.0]])
    assert torch.equal(values_for_actions(state, response), expected)


def _repeated_query_rows(vocab: int):
    """Three queries twice each (left-padded), responses of different lengths (right-padded): six rows."""
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9, 7)]
    rows = [q for q in queries for _ in range(2)]
    width = max(map(len, rows))
    query_ids = torch.tensor([[0] * (width - len(q)) + q for q in rows])
    query_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in rows])
    response_mask = (torch.arange(6)[None] < torch.tensor([6, 3, 6, 1, 4, 5])[:, None]).long()
    response_ids = torch.randint(3, vocab, (6, 6), generator=g).masked_fill(response_mask == 0, 0)
    return query_ids, query_mask, response_ids, response_mask


def test_score_query_response_forwards_a_repeated_query_once_with_the_same_scores(arch_model):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.heads import score_query_response, score_sequences

    arch, model = arch_model
    torch.manual_seed(1)
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(config).eval()
    query_ids, query_mask, response_ids, response_mask = _repeated_query_rows(model.config.vocab_size)
    batch_sizes = []
    trunk = getattr(reward, reward.base_model_prefix)
    hook = trunk.register_forward_pre_hook(lambda _m, _a, kw: batch_sizes.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    shared = score_query_response(reward, query_ids, query_mask, response_ids, response_mask)
    hook.remove()
    with torch.no_grad():
        full = score_sequences(reward, torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1))
    assert batch_sizes == [3, 6]
    assert (shared - full).abs().max() < 1e-5 and full.std() > 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_query_response_logprobs_forward_a_repeated_query_once_with_the_same_result(arch_model, temperature):
    """Queries repeated (a GRPO group) with responses of different lengths: the cached-query forward equals
    the full forward of query ⧺ response to float rounding; the queries run once each (3 rows, not 6)."""
    _arch, model = arch_model
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    queries = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9, 7)]
    rows = [q for q in queries for _ in range(2)]
    width = max(map(len, rows))
    query_ids = torch.tensor([[0] * (width - len(q)) + q for q in rows])  # left-padded
    query_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in rows])
    lengths = torch.tensor([6, 3, 6, 1, 4, 5])
    response_ids = torch.randint(3, vocab, (6, 6), generator=g)
    response_mask = (torch.arange(6)[None] < lengths[:, None]).long()  # right-padded
    response_ids = response_ids.masked_fill(response_mask == 0, 0)
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: batch_sizes.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    with torch.no_grad():
        cached = query_response_logprobs(model, query_ids, query_mask, response_ids, response_mask, temperature)
    hook.remove()
    ids, mask = torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1)
    in_sequence = torch.cat([torch.zeros_like(query_mask), response_mask], 1)
    with torch.no_grad():
        full = response_logprobs(model, ids, mask, in_sequence, temperature)[:, width:]
    assert batch_sizes == [3, 6]  # the distinct queries, then every response against the cache
    assert cached.shape == full.shape == (6, 6)
    assert (cached[response_mask == 0] == 0).all()
    assert (cached - full).abs().max() < 1e-5
    distinct = query_response_logprobs(model, query_ids[::2], query_mask[::2], response_ids[::2],
                                       response_mask[::2], temperature)  # no repeats: the full forward
    assert torch.equal(distinct, full[::2])
