"""Supervised fine-tuning (``rlhfkit sft``): learn the demonstrations' responses, loss on response tokens only.

    rlhfkit sft --config configs/sft.yaml data.train_file=demos.jsonl train.output_dir=runs/sft

1. **Check before any work**: the config (types, cross-field rules), the model folder, the tokenizer and
   every data row (file, line and field named) — nothing is written before all of them pass.
2. **Encode**: chat template, prompt/response boundary, truncation; the encode report (rows truncated,
   dropped) is printed and saved in ``train.output_dir/data_report.json``.
3. **Train** on the shared loop: loss ``Σ_tokens −log p(y_t | y_<t) / (response tokens of the global batch)``
   — a token-weighted mean over the whole global batch, exact under gradient accumulation
   (``weight_fn`` = target tokens per micro-batch). The LM head runs only over the columns that predict a
   response token (``logits_to_keep``). Less padding: ``group_by_length`` (steps of similar lengths), or
   packing (several examples per row, attention and positions restarting at each example: see
   :mod:`rlhfkit.trainers.pretrain`). Full or LoRA; optionally NEFTune noise on the input embeddings
   (``neftune_alpha``, :mod:`rlhfkit.models.neftune`).
4. **Save** ``train.output_dir/final``: merged weights (a plain ``AutoModelForCausalLM`` folder), or with
   ``lora.enabled=true lora.save_merged=false`` the PEFT adapter folder whose base is ``model.path`` —
   plus the tokenizer and ``rlhfkit_sft.yaml`` (the resolved config).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError, Recipe, load_config, save_config
from rlhfkit.engine.runtime import set_threads
from rlhfkit.engine.stage_config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    check_trained_dtype,
    data_sources,
    source_name,
)
from rlhfkit.engine.train_config import TrainConfig


@dataclass
class SFTLoraConfig(LoraConfig):
    save_merged: bool = True
    """Save ``final`` as merged weights (a plain model folder); false: the PEFT adapter folder."""


@dataclass
class SFTConfig(Recipe):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: SFTLoraConfig = field(default_factory=SFTLoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    packing: bool = False
    """Pack several examples into each row of up to ``data.max_length`` tokens (less padding, same loss;
    attention and position ids restart at every example). Rows, not examples, are then the loop's units:
    ``per_device_batch_size`` counts packed rows."""
    group_by_length: bool = False
    """Fill each step with examples (or packed rows) of similar length: less padding, the same loss; the
    order stays a pure function of (seed, epoch), so resume is exact. Needs ``train.shuffle``."""
    neftune_alpha: float = 0.0
    """NEFTune: uniform noise of bound α/√(L·d) on the input embeddings while training (Jain et al. 2023;
    the paper's α: 5–15). 0: off. Evaluation and the saved model are unaffected."""

    def validate(self) -> None:
        check_trained_dtype(self.model, self.lora)
        if self.neftune_alpha < 0:
            raise ConfigError(f"neftune_alpha must be >= 0 (0 turns it off), got {self.neftune_alpha}")
        if self.group_by_length and not self.train.shuffle:
            raise ConfigError("group_by_length=true draws its own seeded order and needs train.shuffle=true")
        if self.lora.save_merged is False and not self.lora.enabled:
            raise ConfigError("lora.save_merged=false needs lora.enabled=true (there is no adapter to save)")


# Stage keys a resumed run may change: they never touch the weights' trajectory (evaluation runs under a
# saved-and-restored RNG state; save_merged only shapes the export after the last step).
SAFE_TO_CHANGE_ON_RESUME = ("data.eval_file", "lora.save_merged")


@dataclass
class SFTResult:
    final_dir: Path
    status: str  # the loop's: "completed" or "already_complete"
    metrics: dict[str, Any]  # the last step's log line (train and eval metrics)


def main(args) -> int:
    """``rlhfkit sft [--config FILE] key=value…``"""
    from rlhfkit.api import sft

    result = sft(load_config(SFTConfig, args.config, args.overrides))
    print(f"sft: {result.status}; model saved in {result.final_dir}")
    return 0


# ----------------------------------------------------------------------------- 1–2: checks and encoding


@dataclass
class SFTData:
    train: list[Any]  # EncodedSFT, or PackedRow when packing
    eval: list[Any] | None
    report: dict[str, Any]  # what encoding changed, saved as data_report.json


def check_model_folder(cfg_model: ModelConfig, max_length: int, lora_enabled: bool = False,
                       save_merged: bool = True):
    """Validate the model folder (cheap: config and files only, no weights loaded) and ``max_length``
    against its positions; return its tokenizer."""
    from rlhfkit.models.load import _adapter_base_path, is_adapter_folder, load_tokenizer, read_model_config

    folder = Path(cfg_model.path)
    if is_adapter_folder(folder):
        if lora_enabled and not save_merged:
            raise ConfigError(f"model.path {cfg_model.path} is an adapter folder: a new adapter saved "
                              "unmerged would lose it; use lora.save_merged=true")
        folder = _adapter_base_path(folder.resolve(), None)
    check_lengths(read_model_config(folder), max_length)
    return load_tokenizer(cfg_model.path)


def load_sft_data(cfg: SFTConfig, tokenizer, sources: dict[str, Any] | None = None) -> SFTData:
    """Validate every row of the train (and eval) data, encode, pack if asked; print the encode report.
    ``sources``: split -> a path or in-memory rows (default: the configured files)."""
    from rlhfkit.data import encode_sft, format_encode_report, load_rows
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.trainers.pretrain import pack_examples

    report: dict[str, Any] = {}
    encoded = {}
    for split, source in (sources or data_sources(cfg.data)).items():
        loaded = load_rows(source, "sft", empty=cfg.data.empty, columns=cfg.data.columns,
                           transcripts=cfg.data.template != "raw", name=source_name(source, split))
        say(loaded.summary())
        examples, enc = encode_sft(tokenizer, loaded.rows, max_length=cfg.data.max_length,
                                   max_prompt_length=cfg.data.max_prompt_length, template=cfg.data.template)
        say(format_encode_report(enc, f"sft {split}"))
        report[split] = {"file": source_name(source, split), "rows_read": loaded.n_read, "rows_dropped_loading": loaded.n_dropped,
                         "rows_warned": loaded.n_warned, **dataclasses.asdict(enc), "rows_kept": enc.n_kept}
        encoded[split] = examples
    train, evaluation = encoded["train"], encoded.get("eval")
    if cfg.packing:
        rows = pack_examples([(e.input_ids, e.labels) for e in train], cfg.data.max_length)
        say(f"sft train: packed {len(train)} examples into {len(rows)} rows of ≤ {cfg.data.max_length} tokens "
            f"({sum(map(len, rows)) / (len(rows) * cfg.data.max_length):.0%} filled)")
        report["train"]["packed_rows"] = len(rows)
        train = rows
    return SFTData(train, evaluation, report)


# ----------------------------------------------------------------------------- model


@contextlib.contextmanager
def seeded_init(seed: int, purpose: str):
    """Draw a model initialisation (LoRA matrices, a new head) from its own stream of ``seed``, leaving the
    global torch RNG as it was."""
    from rlhfkit.data.order import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        yield


def build_policy(cfg_model: ModelConfig, lora: LoraConfig, seed: int):
    """The causal LM to train: ``model.path`` (an adapter folder is merged into its base), LoRA if enabled."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.lora import apply_lora

    model = load_causal_lm(cfg_model.path, cfg_model.dtype, merge_adapter=True,
                           attn_implementation=cfg_model.attn_implementation)
    if lora.enabled:
        with seeded_init(seed, "lora_init"):
            model = apply_lora(model, lora.settings())
    return model


def check_lengths(model_config, max_length: int) -> None:
    """``data.max_length`` must fit the model's position embeddings (``model_config``: a transformers config)."""
    from rlhfkit.trainers.pretrain import position_limit

    limit = position_limit(model_config)
    if limit is not None and max_length > limit:
        raise ConfigError(f"data.max_length={max_length} exceeds the model's {limit} positions; lower it")


# ----------------------------------------------------------------------------- 3–4: train and save


def sft_step(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Token-mean NLL of the response tokens of a micro-batch (the loop's ``step_fn``; pair it with
    ``weight_fn=target_token_count``). Same value as ``pretrain.causal_lm_step``, but for a padded batch the
    LM head runs only over columns first..last that predict a response token of some row (the head and its
    log-softmax over the vocabulary cost as much as a layer of a small model). Packed rows take the full path.
    """
    from rlhfkit.losses import sft_nll
    from rlhfkit.models.forward import forward_logits
    from rlhfkit.ops import IGNORE_INDEX, shift_labels
    from rlhfkit.trainers.pretrain import causal_lm_step

    if "position_ids" in batch:
        return causal_lm_step(model, batch, "sft/nll")
    targets = shift_labels(batch["labels"])  # (B, T): targets[:, t] is predicted at column t
    columns = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    if columns.numel() == 0:
        return causal_lm_step(model, batch, "sft/nll")
    first, last = int(columns[0]), int(columns[-1]) + 1
    keep = torch.arange(first, last, device=targets.device)
    logits = forward_logits(model, batch["input_ids"], batch["attention_mask"], logits_to_keep=keep)  # (B, S, V)
    out = sft_nll(logits, targets[:, first:last])
    loss = out.nll_sum.sum() / out.token_count.sum().clamp(min=1)
    return loss, {"sft/nll": loss.detach()}


def train_sft(cfg: SFTConfig, *, train_dataset: Any = None, eval_dataset: Any = None) -> SFTResult:
    """Run SFT described by ``cfg`` (validated by :func:`load_config`); resume if ``train.output_dir`` holds
    a checkpoint of the same run. Returns where the final model is. ``train_dataset`` / ``eval_dataset``
    (a ``datasets.Dataset`` or a list of dicts) replace ``data.train_file`` / ``data.eval_file``."""
    from rlhfkit.data.collate import LengthGroupedDataset, collate_sft, pad_token_id_for
    from rlhfkit.data.templates import adopt_template
    from rlhfkit.engine.checkpoint import save_folder_atomically
    from rlhfkit.engine.loop import TrainLoop
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.neftune import neftune
    from rlhfkit.trainers.pretrain import (
        FINAL_DIR,
        check_packed_attention,
        collate_packed,
        mean_nll,
        target_token_count,
    )

    set_threads(cfg.train.threads)  # before any work: encoding and reference passes use them too
    sources = data_sources(cfg.data, train_dataset, eval_dataset)
    tokenizer = check_model_folder(cfg.model, cfg.data.max_length, cfg.lora.enabled, cfg.lora.save_merged)
    adopt_template(tokenizer, cfg.data.template)  # the saved tokenizer carries the template trained with
    data = load_sft_data(cfg, tokenizer, sources)
    model = build_policy(cfg.model, cfg.lora, cfg.train.seed)
    if cfg.packing:
        check_packed_attention(model)
    pad_id = pad_token_id_for(tokenizer)

    def collate(examples):
        if cfg.packing:
            return collate_packed(examples, pad_token_id=pad_id)
        return collate_sft(examples, pad_token_id=pad_id)

    def eval_collate(examples):
        return collate_sft(examples, pad_token_id=pad_id)

    def evaluate(m):
        return {"eval/sft/nll": mean_nll(m, data.eval, eval_collate, cfg.train.per_device_batch_size)}

    loop = TrainLoop(cfg.train, model, run_config=cfg, tokenizer=tokenizer,
                     eval_fn=evaluate if data.eval else None, safe_to_change=SAFE_TO_CHANGE_ON_RESUME,
                     reports={"data_report.json": data.report})  # written once the resume check passed
    dataset: Any = data.train
    if cfg.group_by_length:
        global_batch = cfg.train.per_device_batch_size * cfg.train.grad_accum_steps * loop.num_processes
        dataset = LengthGroupedDataset(data.train, global_batch, cfg.train.seed)
        dataset.loop = loop
    with neftune(model, cfg.neftune_alpha):
        summary = loop.fit(dataset, collate, sft_step, weight_fn=target_token_count)
    trained = loop.final_model().eval()  # gathered from the shards under FSDP2 (every process calls it)
    final = Path(cfg.train.output_dir) / FINAL_DIR
    if loop.is_main_process:  # one writer: the ranks hold the same weights, and racing renames could clash
        save_folder_atomically(final, lambda folder: save_sft_model(trained, tokenizer, folder, cfg))
    loop.accelerator.wait_for_everyone()  # no rank returns before the folder it names exists
    loop.retire_checkpoints()  # only now that final/ is complete
    say(f"sft: saved {'the LoRA adapter' if _saves_adapter(cfg) else 'the model'} in {final}")
    return SFTResult(final, summary.status, summary.last_metrics)


def _saves_adapter(cfg: SFTConfig) -> bool:
    return cfg.lora.enabled and not cfg.lora.save_merged


def save_sft_model(model, tokenizer, folder: Path, cfg: SFTConfig) -> Path:
    """A folder plain transformers (merged) or peft (adapter, base = ``model.path``) loads, + tokenizer."""
    from rlhfkit.models.lora import save_policy

    base = Path(cfg.model.path).resolve()
    out = save_policy(model, folder, merge=not _saves_adapter(cfg), tokenizer=tokenizer, base_model_path=base)
    save_config(cfg, Path(folder) / "rlhfkit_sft.yaml")
    return out
