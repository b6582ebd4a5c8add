"""Batches: right padding for training, left padding for generation.

Training batches are right-padded (real tokens first, so position ids 0..n−1 are the default ones every
architecture computes, and a reward head reads the last real token at ``attention_mask.sum(1) − 1``).
Generation batches are left-padded, so every prompt ends at the last column and the new tokens of all
rows are appended in the same column (Hugging Face ``generate`` derives position ids from the mask).

Pad value: ``pad_token_id_for(tokenizer)`` = the pad token, else EOS, else 0. Its value never matters
— the attention mask hides it and labels are ``IGNORE_INDEX`` there — it only has to be a valid id,
which is why a tokenizer without a pad token (Llama, GPT-2) needs no change.

All tensors are ``torch.long``. Masks are 1 for a real token, 0 for padding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch

from rlhfkit.data.encode import IGNORE_INDEX, EncodedGroup, EncodedPreference, EncodedPrompt, EncodedSFT
from rlhfkit.data.order import derive_seed, epoch_permutation


def pad_token_id_for(tokenizer: Any) -> int:
    """The id used for padding: ``pad_token_id``, else ``eos_token_id``, else 0 (hidden by the mask)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def _padded_length(longest: int, pad_to_multiple_of: int | None) -> int:
    if pad_to_multiple_of is None:
        return longest
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    return -(-longest // pad_to_multiple_of) * pad_to_multiple_of


def pad(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    side: Literal["right", "left"] = "right",
    pad_to_multiple_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of ints to one (N, T) long tensor; return ``(values, mask)``, mask 1 on real entries.

    T is the longest length, rounded up to a multiple of ``pad_to_multiple_of`` if given.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    width = _padded_length(max(len(s) for s in sequences), pad_to_multiple_of)
    values = torch.full((len(sequences), width), pad_value, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, T)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        span = slice(0, n) if side == "right" else slice(width - n, width)
        values[i, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, span] = 1
    return values, mask


def _sequences(
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None,
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response rows with labels and a response mask."""
    input_ids, attention_mask = pad(
        [p + r for p, r in zip(prompts, responses)], pad_token_id, "right", pad_to_multiple_of
    )
    labels, _ = pad(
        [[IGNORE_INDEX] * len(p) + r for p, r in zip(prompts, responses)],
        IGNORE_INDEX,
        "right",
        pad_to_multiple_of,
    )
    return {
        "input_ids": input_ids,  # (N, T)
        "attention_mask": attention_mask,  # (N, T)
        "labels": labels,  # (N, T) IGNORE_INDEX on prompt and padding
        "response_mask": (labels != IGNORE_INDEX).long(),  # (N, T) 1 on response tokens
    }


def collate_sft(
    examples: Sequence[EncodedSFT], *, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded SFT batch: ``input_ids``, ``attention_mask``, ``labels`` (B, T).

    ``labels`` are ``IGNORE_INDEX`` on the prompt and on padding, the token ids on the response (not yet
    shifted: see ``ops.shift_labels``).
    """
    batch = _sequences(
        [e.prompt_ids for e in examples], [e.response_ids for e in examples], pad_token_id, pad_to_multiple_of
    )
    del batch["response_mask"]
    return batch


def collate_prompts(
    examples: Sequence[EncodedPrompt], *, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded generation batch: ``input_ids``, ``attention_mask`` (B, T); every prompt ends at T−1."""
    input_ids, attention_mask = pad(
        [e.prompt_ids for e in examples], pad_token_id, "left", pad_to_multiple_of
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_preference(
    examples: Sequence[EncodedPreference], *, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """One right-padded batch of 2B rows: the B chosen sequences, then the B rejected ones.

    One forward pass scores both halves. Keys: ``input_ids``, ``attention_mask``, ``labels``,
    ``response_mask`` (2B, T); ``chosen_index`` = [0..B), ``rejected_index`` = [B..2B) (B,) — rows of
    pair i; ``pair_group`` = [0..B) (B,); ``n_pairs`` = B (an int). The index tensors give the same
    interface as :func:`collate_groups`: ``loss(scores[chosen_index], scores[rejected_index])``.
    """
    n = len(examples)
    prompts = [e.prompt_ids for e in examples] * 2
    responses = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    batch: dict[str, Any] = _sequences(prompts, responses, pad_token_id, pad_to_multiple_of)
    batch["chosen_index"] = torch.arange(n)
    batch["rejected_index"] = torch.arange(n, 2 * n)
    batch["pair_group"] = torch.arange(n)
    batch["n_pairs"] = n
    return batch


def collate_groups(
    examples: Sequence[EncodedGroup], *, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Comparison groups (rankings): every response once, every pair of every group by index.

    With N = Σ K_g responses and P = Σ pairs: ``input_ids``, ``attention_mask``, ``labels``,
    ``response_mask`` (N, T) right-padded, groups in order; ``chosen_index``, ``rejected_index`` (P,) rows
    of each pair; ``pair_group`` (P,) the group of each pair (to average per prompt, as InstructGPT
    does); ``n_pairs`` = P and ``n_groups`` (ints). A ranking of K costs K sequences, not K(K−1).
    """
    prompts, responses, chosen, rejected, group_of_pair = [], [], [], [], []
    for g, example in enumerate(examples):
        offset = len(responses)
        for ids in example.response_ids:
            prompts.append(example.prompt_ids)
            responses.append(ids)
        for c, r in example.pairs:
            chosen.append(offset + c)
            rejected.append(offset + r)
            group_of_pair.append(g)
    batch: dict[str, Any] = _sequences(prompts, responses, pad_token_id, pad_to_multiple_of)
    batch["chosen_index"] = torch.tensor(chosen, dtype=torch.long)
    batch["rejected_index"] = torch.tensor(rejected, dtype=torch.long)
    batch["pair_group"] = torch.tensor(group_of_pair, dtype=torch.long)
    batch["n_pairs"] = len(chosen)
    batch["n_groups"] = len(examples)
    return batch


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    *,
    mega_batch_factor: int = 50,
    drop_last: bool = False,
) -> list[list[int]]:
    """Batches of indices with similar lengths, to cut padding waste; deterministic under ``seed``.

    Shuffle all indices, cut them into mega-batches of ``batch_size × mega_batch_factor``, sort each
    mega-batch by length (longest first) and cut it into batches, then shuffle the batch order. Every
    index appears exactly once (the last batch may be smaller unless ``drop_last``). Randomness comes
    from ``random.Random(seed)`` only; pass ``seed + epoch`` for a new order each epoch.
    """
    if batch_size < 1 or mega_batch_factor < 1:
        raise ValueError(
            f"batch_size and mega_batch_factor must be >= 1, got {batch_size}, {mega_batch_factor}"
        )
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    rng.shuffle(batches)
    return batches


def collate_shared_prompt(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]], *, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One right-padded row per prompt holding the prompt once and then each of its responses.

    Row g is ``prompt_g + response_g1 + … + response_gK``. Each response attends to the prompt and to itself,
    never to the other responses, and its position ids continue from the prompt's (as if it followed the
    prompt alone), so every response gets the logits and hidden states it would get in a row of its own,
    while the prompt is computed once instead of K times ("prefix sharing": Wang et al. 2024,
    *Accelerating Direct Preference Optimization with Prefix Sharing*). A DPO pair costs P + C + R tokens
    instead of 2P + C + R. :func:`rlhfkit.models.forward.shared_prompt_attention_mask` turns ``segment_ids``
    into the (G, 1, T, T) mask the model needs.

    With G rows and N = Σ K_g responses, numbered row by row (response n of the batch is the k-th of its row):

    * ``input_ids``, ``attention_mask`` (1 on real tokens), ``response_mask`` (1 on response tokens) (G, T);
    * ``position_ids`` (G, T): 0..p−1 on the prompt, p, p+1, … again on every response, 0 on padding;
    * ``segment_ids`` (G, T): 0 on the prompt, k on the k-th response (1-based), −1 on padding;
    * ``response_row``, ``response_start``, ``response_end`` (N,): the row and columns [start, end) of each
      response; ``prompt_length`` (G,).
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need one list of responses per prompt, got {len(prompts)} prompts and "
                         f"{len(responses)} response lists")
    rows, segments, positions, starts, ends, owners = [], [], [], [], [], []
    for g, (prompt, group) in enumerate(zip(prompts, responses)):
        if not prompt or not group or any(not r for r in group):
            raise ValueError(f"row {g}: the prompt and every response need at least one token")
        row, segment, position = list(prompt), [0] * len(prompt), list(range(len(prompt)))
        for k, response in enumerate(group, start=1):
            starts.append(len(row))
            row += response
            segment += [k] * len(response)
            position += range(len(prompt), len(prompt) + len(response))
            ends.append(len(row))
            owners.append(g)
        rows.append(row)
        segments.append(segment)
        positions.append(position)
    input_ids, attention_mask = pad(rows, pad_token_id, "right")
    segment_ids = torch.full_like(input_ids, -1)
    position_ids = torch.zeros_like(input_ids)
    for g, (segment, position) in enumerate(zip(segments, positions)):
        segment_ids[g, : len(segment)] = torch.tensor(segment)
        position_ids[g, : len(position)] = torch.tensor(position)
    return {
        "input_ids": input_ids,  # (G, T)
        "attention_mask": attention_mask,  # (G, T)
        "position_ids": position_ids,  # (G, T)
        "segment_ids": segment_ids,  # (G, T)
        "response_mask": (segment_ids > 0).long(),  # (G, T)
        "response_row": torch.tensor(owners),  # (N,)
        "response_start": torch.tensor(starts),  # (N,)
        "response_end": torch.tensor(ends),  # (N,)
        "prompt_length": torch.tensor([len(p) for p in prompts]),  # (G,)
    }


class LengthGroupedDataset:
    """A training dataset as the shared loop sees it, each step filled with examples of similar length.

    The loop asks for ``dataset[i]`` for the indices of its permutation P_e of epoch e
    (:func:`rlhfkit.data.order.epoch_permutation`). Here the example at position k of P_e is replaced by the example at
    position k of a length-grouped order G_e: :func:`length_grouped_batches` with global batches, seeded by
    (seed, "length_groups", e), the full batches in random order except that the one holding the longest
    example comes first (an out-of-memory error then shows at the first step, not hours in — as transformers'
    ``LengthGroupedSampler`` does), and the short one last. A step (k..k+G)
    is then one group, and the order stays a pure function of (seed, epoch, position), so a resumed run
    sees the same steps. Reads the loop's ``epoch`` (the epoch of the step being assembled): set ``loop``.
    ``lengths`` are what a batch pads to, one per example; default ``len(example)`` (for a pair, the longer
    of its two sequences).
    """

    def __init__(self, examples: Sequence[Any], global_batch_size: int, seed: int, mega_batch_factor: int = 50,
                 lengths: Sequence[int] | None = None):
        if lengths is not None and len(lengths) != len(examples):
            raise ValueError(f"{len(lengths)} lengths for {len(examples)} examples")
        self.examples = examples
        self.lengths = list(lengths) if lengths is not None else [len(e) for e in examples]
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.loop = None  # the TrainLoop, set before fit
        self._epoch: int | None = None
        self._grouped: list[int] = []
        self._position_of: list[int] = []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        if self.loop is None:
            raise RuntimeError("LengthGroupedDataset.loop is not set")
        if self.loop.epoch != self._epoch:
            self._prepare(self.loop.epoch)
        return self.examples[self._grouped[self._position_of[index]]]

    def grouped_order(self, epoch: int) -> list[int]:
        """G_e: example indices of epoch ``epoch``, one global batch of similar lengths after another."""
        batches = length_grouped_batches(self.lengths, self.global_batch_size,
                                         derive_seed(self.seed, "length_groups", epoch),
                                         mega_batch_factor=self.mega_batch_factor)
        full = [b for b in batches if len(b) == self.global_batch_size]
        short = [b for b in batches if len(b) != self.global_batch_size]  # at most one: the data's tail
        if full:
            longest = max(range(len(full)), key=lambda k: max(self.lengths[i] for i in full[k]))
            full.insert(0, full.pop(longest))
        return [i for batch in full + short for i in batch]

    def _prepare(self, epoch: int) -> None:
        permutation = epoch_permutation(self.seed, epoch, len(self.examples), shuffle=True)
        self._position_of = [0] * len(self.examples)
        for position, index in enumerate(permutation):
            self._position_of[index] = position
        self._grouped, self._epoch = self.grouped_order(epoch), epoch
