"""rlhfkit.ops against independent computations: Python loops over valid entries, torch.distributions."""

import math
import statistics

import pytest
import torch

from rlhfkit.ops import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sequence_logprobs,
    shift_labels,
)


def ragged_batch(seed=0, shape=(4, 6)):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, length in enumerate([6, 3, 1, 4][: shape[0]]):
        mask[row, :length] = True
    return x, mask


def valid_entries(x, mask):
    return [float(v) for v, m in zip(x.flatten().tolist(), mask.flatten().tolist()) if m]


def test_masked_sum_and_mean_match_loop_over_valid_entries():
    x, mask = ragged_batch()
    x[~mask] = float("nan")  # garbage on padding must not leak
    entries = valid_entries(x, mask)
    assert masked_sum(x, mask).item() == pytest.approx(sum(entries))
    assert masked_mean(x, mask).item() == pytest.approx(sum(entries) / len(entries))
    per_row = masked_mean(x, mask, dim=1)
    for row in range(x.shape[0]):
        row_entries = valid_entries(x[row], mask[row])
        assert per_row[row].item() == pytest.approx(sum(row_entries) / len(row_entries))


def test_masked_mean_of_empty_row_is_zero_not_nan():
    x = torch.ones(2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, mask, dim=1).tolist() == [1.0, 0.0]


def test_masked_var_matches_statistics_module():
    x, mask = ragged_batch(seed=1)
    entries = valid_entries(x, mask)
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(entries))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(entries))


def test_masked_var_refuses_too_few_entries():
    x = torch.ones(1, 3)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(x, torch.zeros(1, 3), unbiased=False)


def test_masked_whiten_matches_loop_and_ignores_padding():
    x, mask = ragged_batch(seed=2)
    x = x * 3 + 5
    x[~mask] = 1e6  # would dominate the statistics if padding were included
    entries = valid_entries(x, mask)
    mean, std = statistics.mean(entries), statistics.stdev(entries)
    whitened = masked_whiten(x, mask, eps=0.0)
    for value, whitened_value, valid in zip(
        x.flatten().tolist(), whitened.flatten().tolist(), mask.flatten()
    ):
        expected = (value - mean) / std if valid else 0.0
        assert whitened_value == pytest.approx(expected)
    kept_mean = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    for value, kept, valid in zip(x.flatten().tolist(), kept_mean.flatten().tolist(), mask.flatten()):
        expected = (value - mean) / std + mean if valid else 0.0
        assert kept == pytest.approx(expected)


def test_masked_whiten_single_entry_does_not_crash():
    out = masked_whiten(torch.tensor([[2.0, 9.0]]), torch.tensor([[1, 0]]))
    assert out.tolist() == [[0.0, 0.0]]


def test_mask_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="mask shape"):
        masked_sum(torch.ones(2, 3), torch.ones(3, 2))


def test_logprobs_from_logits_matches_categorical():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 11, generator=generator) * 4
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    expected = torch.distributions.Categorical(logits=logits).log_prob(labels)
    for chunk_rows in (None, 1, 2):
        got = logprobs_from_logits(logits, labels, chunk_rows=chunk_rows)
        torch.testing.assert_close(got, expected)


def test_logprobs_from_logits_ignore_index_and_gradient():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4), generator=generator)
    labels[1, 2:] = -100
    got = logprobs_from_logits(logits, labels, chunk_rows=1)
    assert got[1, 2:].tolist() == [0.0, 0.0]
    got.sum().backward()
    # Independent gradient: d/dz log softmax(z)[y] = onehot(y) − softmax(z), zero where ignored.
    probs = torch.softmax(logits.detach(), dim=-1)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), 7).to(torch.float64)
    expected = (onehot - probs) * (labels != -100).unsqueeze(-1)
    torch.testing.assert_close(logits.grad, expected)


def test_logprobs_from_logits_upcasts_half_precision():
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 3, 9, generator=generator) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 9, (2, 3), generator=generator)
    got = logprobs_from_logits(logits, labels)
    assert got.dtype == torch.float32
    expected = torch.distributions.Categorical(logits=logits.float()).log_prob(labels)
    torch.testing.assert_close(got, expected)


def test_entropy_from_logits_matches_categorical():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 4, 8, generator=generator) * 2
    logits[0, 0] = torch.tensor([50.0] + [-50.0] * 7)  # nearly deterministic: entropy ~ 0, not nan
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits, chunk_rows=2), expected)
    uniform = entropy_from_logits(torch.zeros(1, 1, 8))
    assert uniform.item() == pytest.approx(math.log(8))


def test_sequence_logprobs_sums_response_tokens_only():
    token_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("-inf"), -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_logprobs(token_logprobs, mask).tolist() == [-3.0, -0.5]


def test_shift_labels_aligns_next_token_targets():
    labels = torch.tensor([[5, 6, 7, 8], [1, 2, -100, -100]])
    assert shift_labels(labels).tolist() == [[6, 7, 8, -100], [2, -100, -100, -100]]
    # With shifted labels, logprobs of whole logits equal the sliced-logits computation.
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 4, 10, generator=generator)
    whole = logprobs_from_logits(logits, shift_labels(labels))
    sliced = torch.distributions.Categorical(logits=logits[:, :-1]).log_prob(labels[:, 1:].clamp(min=0))
    torch.testing.assert_close(whole[0, :3], sliced[0])
    torch.testing.assert_close(whole[1, :1], sliced[1, :1])


def test_explained_variance_limits():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    mean_prediction = torch.full_like(returns, 2.0)
    assert explained_variance(mean_prediction, returns, mask).item() == pytest.approx(0.0)
