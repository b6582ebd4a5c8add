"""Tensor helpers shared by the losses, the trainers and the sampler: masked statistics, log-probabilities,
categorical sampling, repeated rows.

Pure functions of tensors; imports only torch and the standard library.

Conventions used throughout rlhfkit:

- ``mask`` is a 0/1 (bool, int or float) tensor of the same shape as the data; 1 marks a valid
  entry (a response token), 0 padding. Values at masked-out positions are never read: they may be
  garbage, even ``inf`` or ``nan`` (padding logprobs often are), and are replaced rather than
  multiplied by zero, because ``nan * 0`` is ``nan``.
- ``B`` is the batch, ``T`` the (response) length, ``V`` the vocabulary.
- ``ignore_index`` (default ``-100``, as in PyTorch and Hugging Face) marks label positions that
  carry no loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

IGNORE_INDEX = -100

# Largest number of logits elements processed at once by the chunked log-softmax helpers
# (2**24 float32 = 64 MiB): bounds the transient memory of logsumexp / softmax on a large vocab.
_MAX_CHUNK_ELEMENTS = 2**24


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if x.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match data shape {tuple(x.shape)}")
    return mask.bool()


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming every tensor's shape unless they are all the same (paired inputs)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match: {shapes}")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the entries where ``mask`` is 1.

    ``Σ_i m_i x_i`` over all entries (``dim=None``, a 0-d tensor) or along ``dim``.
    Shapes: ``x`` and ``mask`` identical, e.g. (B, T). Masked entries are ignored even if non-finite.
    """
    valid = _check_mask(x, mask)
    zeroed = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return zeroed.sum() if dim is None else zeroed.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1: ``Σ m_i x_i / Σ m_i``.

    Over all entries (``dim=None``, 0-d) or along ``dim`` (e.g. ``dim=1`` gives a (B,) per-example
    mean of a (B, T) tensor). Where no entry is valid the mean is 0 (not ``nan``), so an empty
    response contributes nothing instead of poisoning a batch.
    """
    valid = _check_mask(x, mask)
    total = masked_sum(x, valid, dim=dim)
    count = valid.sum() if dim is None else valid.sum(dim=dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all entries where ``mask`` is 1 (a 0-d tensor).

    ``var = Σ m_i (x_i − μ)² / (n − 1)`` with ``n = Σ m_i`` when ``unbiased`` (Bessel's correction),
    ``/ n`` otherwise. Raises ``ValueError`` when there are too few valid entries (0, or 1 when
    unbiased): a variance of nothing is a bug upstream, not a number.
    """
    valid = _check_mask(x, mask)
    count = int(valid.sum().item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(
            f"masked_var needs at least {needed} valid entries (unbiased={unbiased}), got {count}"
        )
    mean = masked_mean(x, valid)
    squared_deviation = masked_sum((x - mean) ** 2, valid)
    return squared_deviation / (count - 1 if unbiased else count)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean and variance of its valid entries only.

    ``y = (x − μ) / sqrt(σ² + eps)``, μ and σ² (unbiased) over all entries where ``mask`` is 1, taken
    jointly over every dimension (so it is *not* invariant to splitting the batch). With
    ``shift_mean=False`` the mean is added back, ``y = (x − μ) / sqrt(σ² + eps) + μ``: only the scale
    changes, as lm-human-preferences does for rewards (so their sign is kept). With a single valid
    entry the biased variance (0) is used. Returns the shape of ``x``; masked entries are set to 0.
    """
    valid = _check_mask(x, mask)
    count = int(valid.sum().item())
    if count == 0:
        raise ValueError("masked_whiten got a mask with no valid entries")
    mean = masked_mean(x, valid)
    variance = masked_var(x, valid, unbiased=count >= 2)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def identity(x: torch.Tensor) -> torch.Tensor:
    """The all-reduce of one process: nothing to add."""
    return x


def whiten_over_processes(x: torch.Tensor, mask: torch.Tensor,
                          sum_over_processes: Callable[[torch.Tensor], torch.Tensor] = identity,
                          eps: float = 1e-8) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` with μ and the unbiased σ² of the valid entries of *every process's* rows.

    (B, T) -> (B, T), zero off ``mask``. ``sum_over_processes`` adds a small tensor over the processes
    (:func:`identity` with one process, where this is :func:`masked_whiten`); two passes, the mean first, in
    float64. Whitening per process instead would give each process its own scale, and the objective would
    depend on how the batch was split across processes.
    """
    valid = mask.bool()
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    x64 = torch.where(valid, x.double(), zero)
    count, total = (float(v) for v in sum_over_processes(torch.stack([valid.sum().double(), x64.sum()])))
    if count == 0:
        raise ValueError("whitening got a mask with no valid entries on any process")
    mean = total / count
    squares = float(sum_over_processes(torch.where(valid, (x64 - mean) ** 2, zero).sum().reshape(1))[0])
    variance = squares / (count - 1 if count >= 2 else 1)
    whitened = (x - mean) / (variance + eps) ** 0.5
    return torch.where(valid, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of the variance of ``returns`` the value predictions explain (0-d tensor).

    ``1 − Var[returns − values] / Var[returns]`` over the valid entries (biased variances).
    1 is perfect, 0 no better than predicting the mean, negative worse. ``nan`` if ``returns`` is
    constant.
    """
    residual_variance = masked_var(returns - values, mask, unbiased=False)
    return_variance = masked_var(returns, mask, unbiased=False)
    return 1.0 - residual_variance / return_variance


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Align labels with the logits of next-token prediction without slicing the logits.

    A causal LM's logits at position t predict token t+1, so the target of ``logits[:, t]`` is
    ``labels[:, t + 1]``. Returns ``shifted[:, t] = labels[:, t + 1]`` and ``shifted[:, -1] =
    ignore_index``: shape (B, T) like ``labels``, so ``logits`` (B, T, V) can be used whole (slicing
    ``logits[:, :-1]`` then ``.contiguous()`` would copy the largest tensor of the step).
    """
    padding = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], padding], dim=1)


def _rows_per_chunk(logits: torch.Tensor, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    elements_per_row = max(1, logits[0].numel()) if logits.shape[0] else 1
    return max(1, _MAX_CHUNK_ELEMENTS // elements_per_row)


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Log-probability of each label under the logits: ``log softmax(logits)[..., label]``.

    Shapes: ``logits`` (B, T, V), ``labels`` (B, T) int, already aligned with the logits (see
    :func:`shift_labels`); returns (B, T) float32 (or float64 for float64 logits).
    Computed as ``logits[label] − logsumexp(logits)`` chunk by chunk over the batch, so no (B, T, V)
    log-softmax is kept for the backward pass; half-precision logits are upcast one chunk at a
    time. Positions whose label is ``ignore_index`` get 0 (and no gradient). Divide the logits by the
    sampling temperature before calling, if one was used.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: expected "
            "logits (B, T, V) and labels (B, T)"
        )
    ignored = labels == ignore_index
    safe_labels = labels.masked_fill(ignored, 0)
    rows = _rows_per_chunk(logits, chunk_rows)
    pieces = []
    for start in range(0, logits.shape[0], rows):
        chunk = logits[start : start + rows]
        if chunk.dtype not in (torch.float32, torch.float64):
            chunk = chunk.float()
        label_logits = chunk.gather(-1, safe_labels[start : start + rows].unsqueeze(-1)).squeeze(-1)
        pieces.append(label_logits - torch.logsumexp(chunk, dim=-1))
    if not pieces:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    token_logprobs = torch.cat(pieces, dim=0)
    return token_logprobs.masked_fill(ignored, 0.0)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``H = −Σ_v p_v log p_v``.

    Shapes: ``logits`` (B, T, V) -> (B, T) float32 (float64 for float64 input), in nats. Chunked
    over the batch like :func:`logprobs_from_logits`. Usually a diagnostic: call under
    ``torch.no_grad()`` unless an entropy bonus is wanted.
    """
    rows = _rows_per_chunk(logits, chunk_rows)
    pieces = []
    for start in range(0, logits.shape[0], rows):
        chunk = logits[start : start + rows]
        if chunk.dtype not in (torch.float32, torch.float64):
            chunk = chunk.float()
        log_p = torch.log_softmax(chunk, dim=-1)
        pieces.append(-(log_p.exp() * log_p).sum(dim=-1))
    if not pieces:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.zeros(logits.shape[:-1], dtype=dtype, device=logits.device)
    return torch.cat(pieces, dim=0)


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each whole response: ``log π(y|x) = Σ_t m_t log π(y_t | x, y_<t)``.

    Shapes: ``token_logprobs`` (B, T), ``mask`` (B, T) marking response tokens -> (B,). This is the
    *summed* log-probability DPO uses; divide by ``mask.sum(1)`` for the per-token average IPO uses.
    """
    if token_logprobs.dim() != 2:
        raise ValueError(f"token_logprobs must be (B, T), got shape {tuple(token_logprobs.shape)}")
    return masked_sum(token_logprobs, mask, dim=1)


# Vocabulary entries converted to float64 at once by `_block_sums` on a CPU (2**20: 8 MiB): a full (B, V) float64
# copy at V = 151,936 is a fresh 78 MB allocation per step, whose page faults cost more than the arithmetic.
_SAMPLER_CHUNK_ELEMENTS = 2**20


def _block_sums(probs: torch.Tensor, block: int) -> torch.Tensor:
    """(B, V) → (B, ⌈V / block⌉) float64 sums of consecutive blocks of ``block`` entries (the last may be short)."""
    rows, vocab = probs.shape
    sums = probs.new_empty((rows, -(-vocab // block)), dtype=torch.float64)
    columns = vocab if probs.device.type != "cpu" else max(block, _SAMPLER_CHUNK_ELEMENTS // max(rows, 1) // block * block)
    for start in range(0, vocab, columns):  # start is a multiple of block
        part = probs[:, start : start + columns]
        full = part.shape[1] // block
        first = start // block
        if full:
            sums[:, first : first + full] = part[:, : full * block].double().view(rows, full, block).sum(dim=-1)
        if part.shape[1] % block:
            sums[:, first + full] = part[:, full * block :].double().sum(dim=-1)
    return sums


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The tokens the uniform numbers ``U`` fall on: (B, V) probabilities, (B, n) ``U`` in [0, 1) → (B, n) long.

    Token ``i`` is drawn when ``(1 − U) · Σ_v p_v`` lies in ``(cdf_{i−1}, cdf_i]``, an interval as wide as
    ``p_i``; with ``U ~ Uniform[0, 1)`` that is a draw from ``p`` (inverse transform sampling). ``1 − U`` lies
    in (0, 1], so the threshold is in (0, total] and a token of probability 0 is never drawn (its interval is
    empty).

    The cumulative sums are float64, in two levels: sums of blocks of ~√V entries and their cumulative sum pick
    the block, then the cumulative sum of that block's entries picks the token. Accumulated in float32 (the
    previous sampler), a token below half a float32 ulp of the running sum (3e-8 near 1) got an empty or a
    doubled interval: at V = 151,936 and a realistic spread of logits ~40,000 tail tokens could never be drawn
    and the distribution drawn was off by total variation ~9e-4 (issue 17). In float64 each interval is exact
    to ~2⁻⁵³ of the total (~1e-16; only tokens below that, together < V·1e-16, stay undrawable — far below any
    sampling noise). The two levels read the (B, V) tensor once and convert only block sums and n blocks to
    float64, which makes the exact sampler cheaper than one float32 cumulative sum over the whole vocabulary
    (``benchmarks/bench_sampler.py``). MPS has no float64: the sums run on the CPU there.
    """
    if probs.device.type == "mps":
        return inverse_cdf(probs.cpu(), uniform.cpu()).to(probs.device)
    rows, vocab = probs.shape
    block = 1 << max(4, round(math.log2(math.sqrt(vocab))))  # 64 at V = 2048, 512 at V = 151,936
    block_cdf = _block_sums(probs, block).cumsum(dim=-1)  # (B, nb)
    threshold = (1.0 - uniform.to(torch.float64)) * block_cdf[:, -1:]  # (B, n) in (0, total]
    chosen = torch.searchsorted(block_cdf, threshold).clamp_(max=block_cdf.shape[1] - 1)  # (B, n) block index
    before = block_cdf.gather(1, (chosen - 1).clamp(min=0)).masked_fill_(chosen == 0, 0.0)  # mass of earlier blocks
    tokens = chosen.unsqueeze(-1) * block + torch.arange(block, device=probs.device)  # (B, n, block)
    inside = probs.gather(1, tokens.clamp(max=vocab - 1).flatten(1)).view(tokens.shape).double()
    within = inside.masked_fill_(tokens >= vocab, 0.0).cumsum(dim=-1)  # (B, n, block)
    # the residual lies in (0, block sum]; the block's own cumulative sum may end 1 ulp lower: stay inside it,
    # on its last token of positive probability
    residual = torch.minimum(threshold - before, within[..., -1])  # (B, n)
    offset = torch.searchsorted(within, residual.unsqueeze(-1)).squeeze(-1)  # (B, n)
    return (chosen * block + offset).clamp_(max=vocab - 1)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of (B, V) probabilities (rows need not be normalised): (B,) long.

    One float64 uniform number per row (53 random bits) mapped through :func:`inverse_cdf`, where
    ``torch.multinomial`` (or Gumbel-max) draws one random number per vocabulary entry — on a small model that
    costs more than the model's attention. ``generator`` None uses the global RNG of ``probs``' device.
    """
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS: no float64 numbers
    uniform = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=dtype)
    return inverse_cdf(probs, uniform).squeeze(-1)


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, inverse)`` when some rows of the (B, P) ``ids``/``mask`` pair repeat, else None: ``first`` (U,)
    the index of each distinct row's first occurrence (in order), ``inverse`` (B,) the distinct row of each row,
    so ``ids[first][inverse] == ids``. GRPO-style rollouts hold each prompt ``n`` times in a row."""
    seen: dict[tuple, int] = {}
    first, inverse = [], []
    for row, key in enumerate(map(tuple, torch.cat([ids, mask.to(ids.dtype)], dim=1).tolist())):
        if key not in seen:
            seen[key] = len(first)
            first.append(row)
        inverse.append(seen[key])
    if len(first) == len(inverse):
        return None
    device = ids.device
    return torch.tensor(first, device=device), torch.tensor(inverse, device=device)
