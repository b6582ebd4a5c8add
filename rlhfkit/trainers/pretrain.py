"""Causal-LM pretraining on plain texts, packed into full rows; the packing SFT reuses; final-folder saving.

``pretrain(texts, tokenizer, model, train_cfg) -> model`` trains on the shared loop and saves a standard
Hugging Face folder in ``train_cfg.output_dir/final`` (the built-in world pretrains its tiny base model
with it). Every text becomes one *document*: its tokens (with the tokenizer's own BOS, if it adds one)
followed by EOS. Documents are concatenated into one stream and cut into rows of exactly ``block_size``
tokens (only the last row is shorter, padded, its padding masked), so no compute is spent on padding —
about 2× faster than one padded transcript per row (WORLD_NOTES). The loss is the mean NLL over every
predicted token (token-weighted across the global batch).

**Attention across documents.** ``separate_documents=True`` (default): position ids restart at 0 at
each document start and the model attends only within its document — the block-diagonal causal mask
transformers builds when it sees restarted ``position_ids`` with no ``attention_mask``
(``masking_utils.find_packed_sequence_indices``); the first token of a document is never a target of
the previous document's EOS. So every document is learnt as if it started the context, which is how
the model is later prompted. ``False``: GPT-2 style, one causal stream per row (positions 0..T−1),
attention crosses documents; ~10 % faster here (the mask is not materialised). A document cut at a
row boundary continues at position 0 of a later row either way (standard practice).

A KV cache also switches that detection off: packed forwards pass ``use_cache=False``.

**Packed SFT rows** (:func:`pack_examples`) use the same mechanism: several prompt/response examples per
row, position ids restarting at each example, labels masked on prompts (so nothing is predicted across
an example boundary). :func:`check_packed_attention` verifies on the live model, before training,
that attention really stops at the boundaries (any architecture that ignored the restarted positions
would fail it loudly instead of silently leaking context between examples).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.ops import IGNORE_INDEX, shift_labels

FINAL_DIR = "final"  # the folder, inside train.output_dir, each stage exports its model to


# ----------------------------------------------------------------------------- packed rows


@dataclass
class PackedRow:
    """One training row holding one or more sequences back to back.

    ``labels`` are aligned with ``input_ids`` (unshifted; ``IGNORE_INDEX`` where no loss is taken);
    ``position_ids`` restart at 0 where a sequence starts, which is also what confines attention to it.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_sequences: int = 1

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_examples(examples: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[PackedRow]:
    """Pack ``(input_ids, labels)`` examples into rows of at most ``max_length`` tokens.

    Best-fit decreasing: longest example first, each into the fullest row it still fits (a new row if
    none). Deterministic for a given input. Each example keeps its own labels; its first label is set to
    ``IGNORE_INDEX`` so the previous example's last token never predicts across the boundary (it is a
    prompt token anyway for SFT). Position ids restart at 0 per example.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    rows: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # sorted (free space, row number)
    for i in order:
        ids, labels = examples[i]
        if len(ids) != len(labels):
            raise ValueError(f"example {i}: {len(ids)} input ids but {len(labels)} labels")
        if len(ids) > max_length:
            raise ValueError(f"example {i} has {len(ids)} tokens, more than max_length={max_length}")
        slot = bisect.bisect_left(free, (len(ids), -1))  # the tightest row with enough room
        if slot == len(free):
            rows.append(PackedRow([], [], [], 0))
            number, room = len(rows) - 1, max_length
        else:
            room, number = free.pop(slot)
        row = rows[number]
        row.input_ids += ids
        row.labels += [IGNORE_INDEX] + list(labels[1:])
        row.position_ids += list(range(len(ids)))
        row.n_sequences += 1
        bisect.insort(free, (room - len(ids), number))
    return rows


def tokenize_documents(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's ids (with the tokenizer's own special prefix, e.g. a Llama BOS) followed by one EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; documents could not be separated")
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        out.append(list(ids) if ids and ids[-1] == eos else list(ids) + [eos])
    return out


class PackedBlocks(torch.utils.data.Dataset):
    """Documents concatenated and cut into rows of ``block_size``: tensors (N, block_size), one row per item.

    With ``separate_documents`` the position ids restart after every EOS and the first token of each
    document (except at a row start, where nothing precedes it) gets ``IGNORE_INDEX`` as label.
    """

    def __init__(self, documents: Sequence[list[int]], block_size: int, separate_documents: bool = True,
                 pad_token_id: int = 0) -> None:
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        documents = [d for d in documents if d]
        stream = torch.tensor([t for doc in documents for t in doc], dtype=torch.long)  # (L,)
        if stream.numel() < 2:
            raise ValueError("the texts hold fewer than 2 tokens; nothing to train on")
        starts = torch.zeros_like(stream, dtype=torch.bool)  # (L,) True at each document's first token
        offsets = torch.tensor([0] + [len(d) for d in documents[:-1]]).cumsum(0)
        starts[offsets] = True
        n_rows = -(-stream.numel() // block_size)
        pad = n_rows * block_size - stream.numel()
        ids = torch.cat([stream, torch.full((pad,), pad_token_id)]).view(n_rows, block_size)
        real = torch.cat([torch.ones_like(stream, dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)])
        starts = torch.cat([starts, torch.ones(pad, dtype=torch.bool)]).view(n_rows, block_size)
        starts[:, 0] = True  # every row starts a (piece of a) sequence
        real = real.view(n_rows, block_size)
        labels = torch.where(real, ids, IGNORE_INDEX)
        if separate_documents:
            labels = torch.where(starts, IGNORE_INDEX, labels)
            self.position_ids = _positions_from_starts(starts)
        else:
            self.position_ids = torch.arange(block_size).expand(n_rows, block_size).clone()
            self.position_ids[~real] = 0  # padding (last row only): a segment of its own, never a target
        self.input_ids, self.labels = ids, labels  # (N, block_size) each
        self.n_documents = len(documents)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "position_ids": self.position_ids[i]}


def _positions_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Position of each token since the last True in ``starts`` (inclusive): (N, T) bool -> (N, T) long."""
    n, t = starts.shape
    index = torch.arange(t).expand(n, t)
    last_start = torch.where(starts, index, 0).cummax(dim=1).values
    return index - last_start


def collate_packed(rows: Sequence[PackedRow | dict], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows to the longest: ``input_ids``, ``labels``, ``position_ids`` (B, T).

    There is deliberately no ``attention_mask``: the restarted ``position_ids`` are what confine attention
    to each sequence (module docstring). Padding is a sequence of its own (positions 0, 1, …) at the end,
    which no real token attends to (causal) and whose labels are ``IGNORE_INDEX``.
    """
    def get(row, key):
        return torch.as_tensor(row[key] if isinstance(row, dict) else getattr(row, key), dtype=torch.long)

    width = max(len(get(r, "input_ids")) for r in rows)
    out = {"input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
           "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
           "position_ids": torch.arange(width).repeat(len(rows), 1)}
    for b, row in enumerate(rows):
        n = len(get(row, "input_ids"))
        for key in ("input_ids", "labels", "position_ids"):
            out[key][b, :n] = get(row, key)
        out["position_ids"][b, n:] = torch.arange(width - n)
    return out


# ----------------------------------------------------------------------------- the loss


def target_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is taken on: labels other than ``IGNORE_INDEX`` after the next-token shift."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def causal_lm_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, T, V) of a padded batch (``attention_mask``) or a packed one (``position_ids``, no mask)."""
    if "position_ids" in batch:
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    from rlhfkit.models.forward import forward_logits

    return forward_logits(model, batch["input_ids"], batch["attention_mask"])


def causal_lm_step(model, batch: dict[str, torch.Tensor], metric: str = "nll") -> tuple[torch.Tensor, dict]:
    """Token-mean NLL of the micro-batch: ``Σ_b nll_sum_b / Σ_b token_count_b`` (the loop's ``step_fn``).

    Pair it with ``weight_fn=target_token_count``: the loop then weights each micro-batch by its share of
    the global batch's tokens, so the step's loss is the token mean over the whole global batch.
    """
    from rlhfkit.losses import sft_nll

    logits = causal_lm_logits(model, batch)  # (B, T, V)
    out = sft_nll(logits, shift_labels(batch["labels"]))
    loss = out.nll_sum.sum() / out.token_count.sum().clamp(min=1)
    return loss, {metric: loss.detach()}


@torch.no_grad()
def mean_nll(model, examples: Sequence[Any], collate: Callable, batch_size: int) -> float:
    """Token-mean NLL over ``examples`` (evaluation), in batches of ``batch_size``."""
    from rlhfkit.losses import sft_nll

    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
        out = sft_nll(causal_lm_logits(model, batch), shift_labels(batch["labels"]))
        total += float(out.nll_sum.sum())
        count += int(out.token_count.sum())
    return total / max(count, 1)


@torch.no_grad()
def check_packed_attention(model, what: str = "packing=true") -> None:
    """Raise :class:`ConfigError` unless the model confines attention to each packed sequence.

    Runs two short sequences packed in one row and the second alone; their logits must agree.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    first = [(7 * i + 3) % vocab for i in range(5)]
    second = [(11 * i + 5) % vocab for i in range(4)]
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=torch.tensor([first + second]), use_cache=False,
                       position_ids=torch.tensor([list(range(5)) + list(range(4))])).logits[0, 5:]
        alone = model(input_ids=torch.tensor([second]), use_cache=False,
                      position_ids=torch.tensor([list(range(4))])).logits[0]
    finally:
        model.train(was_training)
    if not torch.allclose(packed.float(), alone.float(), atol=1e-4, rtol=1e-4):
        name = type(model).__name__
        raise ConfigError(f"{what}: {name} does not confine attention to each packed sequence (restarted "
                          "position ids are ignored by its attention implementation); set it to false")


def position_limit(model_config) -> int | None:
    """The longest sequence a transformers config's position embeddings allow, when it says."""
    text_config = model_config.get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, key, None)
        if isinstance(value, int):
            return value
    return None


# ----------------------------------------------------------------------------- pretraining


@dataclass
class PretrainConfig:
    """What a pretraining run is (saved in checkpoints and compared on resume)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    block_size: int = 128
    """Tokens per row; documents are concatenated and cut at this length."""
    separate_documents: bool = True
    """Attention and position ids restart at every document (module docstring); false: GPT-2 style."""
    n_texts: int = 0
    """Number of training texts (a resume with other data is refused)."""


def pretrain(texts: Sequence[str], tokenizer: Any, model, train_cfg: TrainConfig, *, block_size: int = 128,
             separate_documents: bool = True, eval_texts: Sequence[str] | None = None):
    """Train ``model`` as a causal LM on ``texts`` packed into rows of ``block_size``; return it (eval mode).

    Runs on the shared loop (checkpoints, resume, logs in ``train_cfg.output_dir``) and saves the model and
    tokenizer as a standard Hugging Face folder in ``train_cfg.output_dir/final``. ``eval_texts`` are packed
    the same way and their token-mean NLL is logged as ``eval/pretrain/nll``. Re-running the same call
    resumes (or, when finished, reloads the final weights from the last checkpoint and re-saves).
    """
    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.engine.checkpoint import save_folder_atomically
    from rlhfkit.engine.loop import TrainLoop
    from rlhfkit.engine.metrics_log import say

    train_cfg.validate()
    limit = position_limit(model.config)
    if limit is not None and block_size > limit:
        raise ConfigError(f"block_size={block_size} exceeds the model's {limit} positions")
    pad_id = pad_token_id_for(tokenizer)
    rows = PackedBlocks(tokenize_documents(tokenizer, texts), block_size, separate_documents, pad_id)
    say(f"pretrain: {len(texts)} texts, {int((rows.labels != IGNORE_INDEX).sum())} target tokens in "
        f"{len(rows)} rows of {block_size}")
    eval_rows = (PackedBlocks(tokenize_documents(tokenizer, eval_texts), block_size, separate_documents, pad_id)
                 if eval_texts else None)
    if separate_documents:
        check_packed_attention(model, "separate_documents=true")

    def collate(batch):
        return collate_packed(batch, pad_token_id=pad_id)

    def evaluate(m):
        return {"eval/pretrain/nll": mean_nll(m, eval_rows, collate, train_cfg.per_device_batch_size)}

    run = PretrainConfig(train=train_cfg, block_size=block_size, separate_documents=separate_documents,
                         n_texts=len(texts))
    loop = TrainLoop(train_cfg, model, run_config=run, tokenizer=tokenizer,
                     eval_fn=evaluate if eval_rows is not None else None)
    loop.fit(rows, collate, lambda m, b: causal_lm_step(m, b, "pretrain/nll"), weight_fn=target_token_count)
    trained = loop.final_model().eval()  # gathered from the shards under FSDP2 (every process calls it)

    def write(folder: Path) -> None:
        trained.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    final = save_folder_atomically(Path(train_cfg.output_dir) / FINAL_DIR, write)
    loop.retire_checkpoints()  # only now that final/ is complete
    say(f"pretrain: saved {final}")
    return trained
