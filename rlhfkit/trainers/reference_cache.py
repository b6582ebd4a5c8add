"""Reference log-probabilities for DPO: computed on the fly, or precomputed once and cached in a cache folder.

DPO needs ``log π_ref(y|x)`` of every chosen and rejected response. The reference never changes, so the
values can be computed once before training (one no-grad forward per pair instead of one per pair *per
epoch*, and no second model in memory during training) and stored in a small safetensors file:

    {cache folder}/{data file name}.ref-{key[:16]}.safetensors

The cache folder is the run's ``{train.output_dir}/reference_cache`` unless ``reference_cache_dir`` names
a shared one — never the data's folder, which may be shared or read-only.
        chosen_logps (N,) float32, rejected_logps (N,) float32, row_index (N,) int64
        metadata: {"key": <full key>, "format": FORMAT, "parts": <JSON of the key's parts>}

The key is a hash of everything the numbers depend on — the data file's bytes, the encode settings, the
tokenizer, the token ids actually encoded, and the reference model (its config and *every byte of every
tensor* of its state dict) — so a stale cache is never used: change one data row, one weight, the
tokenizer or ``max_length`` and the key changes, the file is not found, and the values are recomputed.
A file whose metadata or shapes disagree with the key (or that cannot be read) is a miss too. Files are
written atomically (temporary file, fsync, ``os.replace``), so a killed run never leaves a half file; the
temporary file it leaves is deleted by the next write into the folder once its writer no longer runs.

Log-probabilities are *summed* over the response tokens (``rlhfkit.ops.sequence_logprobs``), as the
DPO losses expect; lengths for IPO/RPO come from the batch, not the cache.

Reference sources share one method, ``logps(policy, batch) -> (2B,)`` in the collator's row order
(chosen rows, then rejected rows):

* :class:`PrecomputedReference` — reads ``batch["ref_logps"]`` that the collator attached from the cache;
* :class:`FrozenReference` — a frozen model (a copy of the starting policy, or ``reference:`` folder);
* :class:`AdaptersOffReference` — the LoRA policy with its adapters disabled (no second copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.collate import collate_preference
from rlhfkit.data.encode import EncodedPreference
from rlhfkit.engine.metrics_log import say
from rlhfkit.models.lora import adapters_disabled
from rlhfkit.models.policy import response_logprobs
from rlhfkit.ops import sequence_logprobs

FORMAT = "rlhfkit-reference-logps/1"
_CHUNK = 1 << 24  # bytes hashed per update: bounds the temporary copy of a non-contiguous tensor


# ----------------------------------------------------------------------------- log-probs of a batch


def batch_sequence_logprobs(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, lengths)`` of every row of a preference batch: ``log π(y|x) = Σ_t log π(y_t|x, y_<t)``
    over the response tokens only, and the response token counts. (N, T) batch -> (N,), (N,).

    Logits are computed only over the response span (``response_logprobs``); the sum uses
    ``ops.sequence_logprobs`` on ``response_mask``.
    """
    response_mask = batch["response_mask"]
    token_logprobs = response_logprobs(model, batch["input_ids"], batch["attention_mask"], response_mask)
    return sequence_logprobs(token_logprobs, response_mask), response_mask.sum(dim=1)



def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class _EvalMode:
    """``with _EvalMode(model):`` — eval mode inside (no dropout), the previous mode restored after."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


# ----------------------------------------------------------------------------- reference sources


@dataclass
class ReferenceLogps:
    """Reference log-probabilities of N pairs, in the order of the encoded examples.

    ``chosen`` (N,) float32: ``log π_ref(y_w|x)`` summed over the chosen response's tokens;
    ``rejected`` (N,) float32: the same for the rejected response.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def rows(self, positions: Sequence[int]) -> torch.Tensor:
        """The collator's row order for these pairs: chosen rows, then rejected rows. (2B,)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return torch.cat([self.chosen[index], self.rejected[index]])


class PrecomputedReference:
    """π_ref log-probs looked up in a :class:`ReferenceLogps` table; the collator attaches them to the batch
    as ``ref_logps`` (2B,), so the training step runs no reference forward at all."""

    def __init__(self, table: ReferenceLogps) -> None:
        self.table = table

    def logps(self, policy, batch: dict[str, Any]) -> torch.Tensor:
        if "ref_logps" not in batch:
            raise KeyError("batch has no ref_logps: build it with the DPO collator given this table")
        return batch["ref_logps"]


class FrozenReference:
    """π_ref as its own model: frozen (no gradients), in eval mode, on the policy's device — and under
    ``autocast()``, the autocast the policy's forward runs in (the loop's Accelerator builds it into the
    prepared policy only): the same weights must give the same log-probs, or DPO's margin starts biased."""

    def __init__(self, model, autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.model = model.requires_grad_(False).eval()
        self.autocast = autocast

    @torch.no_grad()
    def logps(self, policy, batch: dict[str, Any]) -> torch.Tensor:
        with self.autocast():
            return batch_sequence_logprobs(self.model, batch)[0]


class AdaptersOffReference:
    """π_ref = the LoRA policy with its adapters disabled: the base weights never change, so no copy is kept
    (Hu et al. 2021; the trick TRL and OpenRLHF use). Evaluated in eval mode, without gradients."""

    @torch.no_grad()
    def logps(self, policy, batch: dict[str, Any]) -> torch.Tensor:
        peft_model = getattr(policy, "module", policy)  # under DDP the PeftModel is wrapped
        with _EvalMode(peft_model), adapters_disabled(peft_model) as reference:
            return batch_sequence_logprobs(reference, batch)[0]


@torch.no_grad()
def compute_reference_logps(model, examples: Sequence[EncodedPreference], *, pad_token_id: int,
                            batch_size: int = 16) -> ReferenceLogps:
    """Reference log-probs of every pair, in eval mode without gradients. Pairs are visited longest first
    in batches of ``batch_size`` (similar lengths share a batch: little padding); the result is in the
    order of ``examples`` and does not depend on ``batch_size`` beyond float rounding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(examples)
    chosen, rejected = torch.empty(n), torch.empty(n)  # (N,) float32
    order = sorted(range(n), key=lambda i: -len(examples[i]))
    device = model_device(model)
    with _EvalMode(model):
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = collate_preference([examples[i] for i in index], pad_token_id=pad_token_id)
            logps, _ = batch_sequence_logprobs(model, _to_device(batch, device))  # (2B,)
            logps = logps.float().cpu()
            chosen[index], rejected[index] = logps[: len(index)], logps[len(index) :]
    return ReferenceLogps(chosen, rejected)


# ----------------------------------------------------------------------------- fingerprints


def _new_hash():
    return hashlib.blake2b(digest_size=32)


def _update_with_tensor(h, tensor: torch.Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # the raw bytes, any dtype
    for start in range(0, flat.numel(), _CHUNK):
        h.update(flat[start : start + _CHUNK].numpy())


def model_config_json(model) -> str:
    """The model's config as JSON without the fields that name where it was loaded from."""
    config = getattr(model, "config", None)
    data = config.to_dict() if config is not None else {"class": type(model).__name__}
    for key in ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, default=str)


def weights_fingerprint(model) -> str:
    """Hash of a model's config and every byte of every tensor of its state dict (names, dtypes, shapes).

    Complete — one changed weight changes it — and cheap: one blake2b pass over the raw bytes (about 1 GB/s
    here, a fraction of one forward pass over the data for any model worth training).
    """
    h = _new_hash()
    h.update(model_config_json(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        _update_with_tensor(h, tensor)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the fast tokenizer's full pipeline (vocab, merges, normalizer,
    pre-tokenizer, post-processor, added tokens), the chat template and the special tokens."""
    h = _new_hash()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow (Python) tokenizer: hash the files it saves
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            for file in sorted(Path(folder).iterdir()):
                h.update(file.name.encode() + b"\0" + file.read_bytes())
    extra = {"class": type(tokenizer).__name__, "chat_template": getattr(tokenizer, "chat_template", None),
             "special": getattr(tokenizer, "special_tokens_map", {}),
             "eos": tokenizer.eos_token_id, "bos": getattr(tokenizer, "bos_token_id", None)}
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def examples_fingerprint(examples: Sequence[EncodedPreference]) -> str:
    """Hash of the token ids actually encoded (and each pair's row index)."""
    h = _new_hash()
    for e in examples:
        h.update(repr((e.index, e.prompt_ids, e.chosen_ids, e.rejected_ids)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheContext:
    """What the reference log-probs depend on besides the data file; hashed once per run.

    ``encode``: the encode settings (max lengths, template, row kind, empty/identical policies) and the
    autocast the values are computed under, as plain data; ``tokenizer`` and ``reference``: :func:`tokenizer_fingerprint`, :func:`weights_fingerprint`.
    """

    encode: dict[str, Any]
    tokenizer: str
    reference: str


def cache_key_parts(data_file: str | Path, examples: Sequence[EncodedPreference],
                    context: CacheContext) -> dict[str, str]:
    return {
        "format": FORMAT,
        # a datasets folder or in-memory rows have no single file: their rows are in "examples"
        "data_file": file_fingerprint(data_file) if Path(data_file).is_file() else "",
        "encode": json.dumps(context.encode, sort_keys=True, default=str),
        "tokenizer": context.tokenizer,
        "examples": examples_fingerprint(examples),
        "reference": context.reference,
    }


def cache_key(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(data_file: str | Path, key: str, cache_dir: str | Path) -> Path:
    """``{cache_dir}/{data file name}.ref-{key[:16]}.safetensors``."""
    return Path(cache_dir) / f"{Path(data_file).name}.ref-{key[:16]}.safetensors"


# ----------------------------------------------------------------------------- the cache file


def load_cache(path: Path, key: str, row_index: torch.Tensor) -> ReferenceLogps | None:
    """The cached table at ``path`` if it is complete and made for ``key`` and these rows, else None."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # noqa: BLE001 — a damaged cache is only a miss
        say(f"reference cache {path} cannot be read ({type(exc).__name__}); recomputing it")
        return None
    n = row_index.shape[0]
    shapes_ok = all(tensors.get(k) is not None and tuple(tensors[k].shape) == (n,)
                    for k in ("chosen_logps", "rejected_logps", "row_index"))
    if meta.get("format") != FORMAT or meta.get("key") != key or not shapes_ok:
        return None
    if not torch.equal(tensors["row_index"], row_index):
        return None
    return ReferenceLogps(tensors["chosen_logps"].float(), tensors["rejected_logps"].float())


def remove_dead_temporaries(folder: Path) -> None:
    """Delete the temporary files of writers killed mid-write (their names carry the writer's pid)."""
    from rlhfkit.engine.checkpoint import pid_is_alive

    for leftover in Path(folder).glob(".*.pid*.tmp"):
        pid = leftover.name.rsplit(".pid", 1)[1].split(".", 1)[0]
        if pid.isdigit() and not pid_is_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def save_cache(path: Path, key: str, parts: dict[str, str], table: ReferenceLogps,
               row_index: torch.Tensor) -> None:
    """Write the table atomically: a temporary file beside ``path``, fsync, ``os.replace``, fsync the folder."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tensors = {"chosen_logps": table.chosen.contiguous(), "rejected_logps": table.rejected.contiguous(),
                   "row_index": row_index.contiguous()}
        save_file(tensors, tmp, metadata={"format": FORMAT, "key": key, "parts": json.dumps(parts)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class CacheResult:
    table: ReferenceLogps
    path: Path
    hit: bool  # read from the cache (False: computed now)
    seconds: float  # time spent (hashing + reading, or computing)
    written: bool = False  # a new cache file was written


def cached_reference_logps(data_file: str | Path, examples: Sequence[EncodedPreference],
                           context: CacheContext, compute: Callable[[], ReferenceLogps], *,
                           cache_dir: str | Path, write: bool = True) -> CacheResult:
    """The reference log-probs of ``examples`` from the cache if a valid entry exists, else ``compute()``
    and store them (only when ``write``: the main process). A cache folder that cannot be written is a
    note, not an error: training goes on with the values in memory."""
    clock = time.perf_counter()
    parts = cache_key_parts(data_file, examples, context)
    key = cache_key(parts)
    path = cache_path(data_file, key, cache_dir)
    row_index = torch.tensor([e.index for e in examples], dtype=torch.long)
    if write and path.parent.is_dir():
        remove_dead_temporaries(path.parent)  # also when this lookup hits and writes nothing
    table = load_cache(path, key, row_index)
    if table is not None:
        return CacheResult(table, path, True, time.perf_counter() - clock)
    table = compute()
    if len(table) != len(examples):
        raise ValueError(f"compute() gave {len(table)} pairs for {len(examples)} examples")
    written = False
    if write:
        try:
            save_cache(path, key, parts, table, row_index)
            written = True
        except OSError as exc:
            say(f"could not write the reference cache {path} ({exc}); going on without it — set "
                "reference_cache_dir to a writable folder to reuse the values in the next run")
    return CacheResult(table, path, False, time.perf_counter() - clock, written)
