"""DPO and its variants (IPO, cDPO, RPO): preferences without a reward model or an RL loop.

    rlhfkit dpo --config configs/dpo.yaml train.output_dir=runs/dpo beta=0.1

A training step, on a micro-batch of B pairs collated into one batch of 2B rows (chosen, then rejected):

1. reference log-probs ``log π_ref(y|x)`` (2B,): looked up in the table precomputed before training and
   cached beside the data (``reference_mode: precompute``), or one no-grad forward of π_ref (``on_the_fly``:
   a frozen copy, or with LoRA the policy with its adapters disabled);
2. one forward of the policy over the 2B rows; ``log π_θ(y|x)`` summed over response tokens only (2B,),
   and the response lengths (for IPO's per-token average and RPO's per-token NLL). With a precomputed
   reference the pair is one row ``prompt + chosen + rejected`` (``shared_prompt``): the prompt is computed
   once, each response attends to it and to itself only, so the log-probs are those of two separate rows
   at the cost of P + C + R tokens instead of 2P + C + R;
3. the loss picked by name from ``rlhfkit.losses.PREFERENCE_LOSSES`` on (chosen, rejected) pairs; the loop
   averages it over the global batch (exact under accumulation), clips, guards and steps.

Metrics (``docs/metrics.md (DPO)``): ``rewards/{chosen,rejected,margins,accuracies}``,
``logps/{chosen,rejected}``, ``logps/chosen_minus_ref`` (likelihood displacement when negative), and the
same under ``eval/`` on ``data.eval_file``. The shared loop does resume; the reference table is keyed by
the data and the *starting* weights, so a resumed run reads the same table, and the data order is the
loop's pure function of (seed, epoch, position) — also with ``group_by_length``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.collate import LengthGroupedDataset
from rlhfkit.losses import PREFERENCE_LOSSES, PreferenceLossOutput, get_preference_loss
from rlhfkit.trainers.reference_cache import (
    AdaptersOffReference,
    CacheContext,
    FrozenReference,
    PrecomputedReference,
    ReferenceLogps,
    _to_device,
    batch_sequence_logprobs,
    examples_fingerprint,
    model_device,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from rlhfkit.trainers.stage_config import DataConfig, LoraConfig, ModelConfig, check_trained_dtype
from rlhfkit.trainers.train_config import TrainConfig

# Config keys that may differ when a run resumes: they change speed, memory or what is reported, never the
# trajectory of the weights beyond float rounding (a precomputed and an on-the-fly reference agree to ~1e-6).
SAFE_TO_CHANGE = ("reference_mode", "reference_batch_size", "reference_cache_dir", "eval_batch_size",
                  "lora.save_merged", "data.eval_file")


@dataclass
class DPOLoraConfig(LoraConfig):
    save_merged: bool = True
    """Save ``final`` as merged weights (a plain model folder); false: the PEFT adapter folder (base =
    ``model.path``)."""


@dataclass
class DPOConfig:
    """``rlhfkit dpo`` settings (a recipe: ``configs/dpo.yaml``; LoRA: ``configs/dpo_lora.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to start from (usually the SFT folder); also the reference unless ``reference`` is set."""
    reference: str | None = None
    """A model folder for π_ref; null = the starting model (with LoRA: the policy with adapters disabled)."""
    data: DataConfig = field(default_factory=DataConfig)
    """``train_file`` / ``eval_file`` of preference rows; lengths, template, empty/identical policies."""
    data_kind: Literal["preference", "ranking"] = "preference"
    """Row format: ``{"prompt","chosen","rejected"}``, or rankings flattened into all their K(K−1)/2 pairs."""
    lora: DPOLoraConfig = field(default_factory=DPOLoraConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/dpo", lr=1e-6))
    """The shared loop; ``per_device_batch_size`` counts pairs (each micro-batch is 2× as many rows)."""
    loss: str = "dpo"
    """One of ``PREFERENCE_LOSSES``: dpo (sigmoid), ipo, cdpo (label smoothing), rpo (DPO + α·NLL on chosen)."""
    beta: float = 0.1
    """β of DPO/cDPO/RPO (the implicit reward's scale, i.e. the KL strength); τ of IPO."""
    label_smoothing: float | None = None
    """cdpo only: ε, the assumed probability that a label is flipped, in (0, 0.5); null = 0.1."""
    rpo_alpha: float | None = None
    """rpo only: α, the weight of the per-token NLL of the chosen response; null = 1.0."""
    reference_mode: Literal["precompute", "on_the_fly"] = "precompute"
    """precompute: π_ref log-probs computed once before training, cached beside the data (faster steps,
    no reference model in memory while training); on_the_fly: one no-grad reference forward per step."""
    reference_batch_size: int = 16
    """Pairs per forward when precomputing reference log-probs."""
    reference_cache_dir: str | None = None
    """Folder of the reference cache; null = ``.rlhfkit-cache`` beside each data file."""
    eval_batch_size: int | None = None
    """Pairs per evaluation forward; null = ``train.per_device_batch_size``."""
    group_by_length: bool = False
    """Fill each step with pairs of similar length (less padding; see docs/metrics.md (DPO) for the speed-up);
    the order is still a pure function of (seed, epoch), so resume is exact. Needs ``train.shuffle``."""
    shared_prompt: bool = True
    """With ``reference_mode: precompute``: one row per pair holding the prompt once, ``prompt + chosen +
    rejected``, each response attending to the prompt and itself only (the same log-probs as two rows, ~1.2×
    fewer tokens to compute). Checked on the live model before training; a model whose attention ignores
    4-D masks keeps two rows per pair."""
    disable_dropout: bool = True
    """Set every dropout probability to 0 (``rlhfkit.models.dropout``; LoRA's included, after the adapters are
    applied): policy and reference log-probs must come from the same function."""

    def validate(self) -> None:
        check_trained_dtype(self.model, self.lora)
        if self.loss not in PREFERENCE_LOSSES:
            raise ConfigError(f"loss: unknown preference loss {self.loss!r}; valid: "
                              f"{', '.join(sorted(PREFERENCE_LOSSES))}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if self.label_smoothing is not None and self.loss != "cdpo":
            raise ConfigError(f"label_smoothing is used only by loss=cdpo (loss is {self.loss!r}); "
                              "remove it or set loss=cdpo")
        if self.label_smoothing is not None and not 0 < self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in (0, 0.5), got {self.label_smoothing}")
        if self.rpo_alpha is not None and self.loss != "rpo":
            raise ConfigError(f"rpo_alpha is used only by loss=rpo (loss is {self.loss!r}); "
                              "remove it or set loss=rpo")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ConfigError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")
        for name in ("reference_batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.group_by_length and not self.train.shuffle:
            raise ConfigError("group_by_length=true draws its own seeded order and needs train.shuffle=true")
        if self.reference is not None and not self.reference:
            raise ConfigError("reference must be a model folder or null (the starting model)")
        if not self.lora.save_merged and not self.lora.enabled:
            raise ConfigError("lora.save_merged=false needs lora.enabled=true (there is no adapter to save)")

    def loss_options(self) -> dict[str, float]:
        """The chosen loss's hyper-parameters beside β (defaults filled in)."""
        if self.loss == "cdpo":
            return {"label_smoothing": 0.1 if self.label_smoothing is None else self.label_smoothing}
        if self.loss == "rpo":
            return {"alpha": 1.0 if self.rpo_alpha is None else self.rpo_alpha}
        return {}


# ----------------------------------------------------------------------------- the objective


@dataclass(frozen=True)
class PreferenceObjective:
    """A preference loss picked by name, with β and its options. Pure: log-probs in, losses out."""

    name: str
    beta: float
    options: dict[str, float] = field(default_factory=dict)

    def __call__(self, policy_logps: torch.Tensor, ref_logps: torch.Tensor, lengths: torch.Tensor,
                 chosen_index: torch.Tensor, rejected_index: torch.Tensor) -> PreferenceLossOutput:
        """``policy_logps``, ``ref_logps``, ``lengths`` (N,) over the batch rows; the index tensors (B,)
        pick each pair's chosen and rejected rows. Returns the loss's (B,) outputs."""
        loss_fn = get_preference_loss(self.name)
        accepted = inspect.signature(loss_fn).parameters
        kwargs: dict[str, Any] = {"beta": self.beta, **self.options}
        if "chosen_lengths" in accepted:  # IPO averages per token; RPO's NLL is per token
            kwargs["chosen_lengths"] = lengths[chosen_index]
        if "rejected_lengths" in accepted:
            kwargs["rejected_lengths"] = lengths[rejected_index]
        return loss_fn(policy_logps[chosen_index], policy_logps[rejected_index],
                       ref_logps[chosen_index], ref_logps[rejected_index], **kwargs)

    def metrics(self, out: PreferenceLossOutput, policy_logps: torch.Tensor, ref_logps: torch.Tensor,
                chosen_index: torch.Tensor, rejected_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Means over the B pairs (0-d tensors), named as in docs/metrics.md (DPO)."""
        policy_logps, ref_logps = policy_logps.detach(), ref_logps.detach()
        chosen, rejected = policy_logps[chosen_index], policy_logps[rejected_index]
        metrics = {
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
            "rewards/accuracies": out.reward_accuracies.mean(),
            "logps/chosen": chosen.mean(),
            "logps/rejected": rejected.mean(),
            "logps/chosen_minus_ref": (chosen - ref_logps[chosen_index]).mean(),
            "logps/rejected_minus_ref": (rejected - ref_logps[rejected_index]).mean(),
        }
        metrics.update({f"{self.name}/{k}": v.mean() for k, v in out.extras.items()})
        return metrics


class DPOStep:
    """``step_fn(model, batch) -> (mean loss over the B pairs, metrics)`` for ``TrainLoop.fit``."""

    def __init__(self, objective: PreferenceObjective, reference) -> None:
        self.objective = objective
        self.reference = reference  # anything with logps(policy, batch) -> (2B,): see reference_cache.py

    def __call__(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = _to_device(batch, model_device(model))
        chosen_index, rejected_index = batch["chosen_index"], batch["rejected_index"]  # (B,) rows of pair i
        if "segment_ids" in batch and not isinstance(self.reference, PrecomputedReference):
            raise ValueError("a shared-prompt batch needs a precomputed reference (its forwards take 2B rows)")
        # 1. reference log-probs (no gradient): from the precomputed table, or a reference forward
        ref_logps = self.reference.logps(model, batch)  # (2B,)
        # 2. one policy forward over chosen and rejected (2B rows, or B shared-prompt rows); summed over
        # response tokens only
        policy_logps, lengths = preference_logprobs(model, batch)  # (2B,), (2B,)
        # 3. the loss by name, per pair; mean over the micro-batch's pairs (the loop weights micro-batches)
        out = self.objective(policy_logps, ref_logps, lengths, chosen_index, rejected_index)  # (B,)
        metrics = self.objective.metrics(out, policy_logps, ref_logps, chosen_index, rejected_index)
        mask = batch["attention_mask"]
        metrics["perf/padding_fraction"] = 1.0 - mask.sum() / mask.numel()
        return out.losses.mean(), metrics


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Pair:
    """One encoded pair and its position in the encoded list (the row of the reference table)."""

    position: int
    example: Any  # EncodedPreference

    def __len__(self) -> int:
        return len(self.example)


class RunIdentity:
    """Stage state saved in every checkpoint: hashes of the encoded training pairs and of the reference's
    weights. The loop checks only the number of examples on resume; this makes a resume on other rows (or
    a retrained ``model.path``) fail by name instead of silently mixing two runs."""

    def __init__(self, train_pairs: str, reference: str) -> None:
        self.hashes = {"train_pairs": train_pairs, "reference": reference}

    def state_dict(self) -> dict[str, str]:
        return dict(self.hashes)

    def load_state_dict(self, state: dict[str, str]) -> None:
        what = {"train_pairs": "the training pairs (data.train_file, its encoding or the tokenizer)",
                "reference": "the reference model's weights (reference, or model.path)"}
        for key, description in what.items():
            if state.get(key) != self.hashes[key]:
                raise ConfigError(f"cannot resume: {description} changed since the checkpoint was written; "
                                  "resume with the same inputs, or choose a new train.output_dir")


class PreferenceCollator:
    """Pairs -> one batch of 2B rows (``collate_preference``), or with ``shared_prompt`` B rows
    ``prompt + chosen + rejected`` (``collate_shared_prompt``: responses 2i and 2i+1 are pair i's chosen and
    rejected); plus ``ref_logps`` (2B,) from the table, in the batch's response order."""

    def __init__(self, pad_token_id: int, table: ReferenceLogps | None = None, shared_prompt: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.table = table
        self.shared_prompt = shared_prompt

    def __call__(self, pairs: list[Pair]) -> dict[str, Any]:
        from rlhfkit.data.collate import collate_preference, collate_shared_prompt

        examples = [p.example for p in pairs]
        if not self.shared_prompt:
            batch = collate_preference(examples, pad_token_id=self.pad_token_id)
        else:
            batch = collate_shared_prompt([e.prompt_ids for e in examples],
                                          [[e.chosen_ids, e.rejected_ids] for e in examples],
                                          pad_token_id=self.pad_token_id)
            n = len(examples)
            batch.update(chosen_index=torch.arange(0, 2 * n, 2), rejected_index=torch.arange(1, 2 * n, 2),
                         pair_group=torch.arange(n), n_pairs=n)
        if self.table is not None:
            ref_logps = self.table.rows([p.position for p in pairs])  # (2B,) chosen rows, then rejected rows
            if self.shared_prompt:  # -> chosen_0, rejected_0, chosen_1, …: the shared batch's response order
                ref_logps = ref_logps.view(2, -1).t().reshape(-1)
            batch["ref_logps"] = ref_logps
        return batch


def preference_logprobs(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, lengths)`` (2B,) of a batch from :class:`PreferenceCollator`, in its response order."""
    from rlhfkit.models.forward import shared_prompt_logprobs

    if "segment_ids" in batch:
        return shared_prompt_logprobs(model, batch)
    return batch_sequence_logprobs(model, batch)


def evaluate_pairs(model, pairs: list[Pair], collate: PreferenceCollator, step: DPOStep,
                   batch_size: int) -> dict[str, float]:
    """The step's loss and metrics over every held-out pair (longest first, little padding), averaged over
    pairs and prefixed ``eval/``. Runs under the loop's ``torch.no_grad`` in eval mode."""
    order = sorted(pairs, key=lambda p: -len(p))
    sums: dict[str, float] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        loss, metrics = step(model, collate(chunk))
        for name, value in {"loss": loss, **metrics}.items():
            if not name.startswith("perf/"):  # padding of evaluation batches says nothing about training
                sums[name] = sums.get(name, 0.0) + len(chunk) * float(value)
    return {f"eval/{name}": total / len(order) for name, total in sums.items()}


# The DPO name of the shared length-grouped view (kept: recipes and tests import it from here).
LengthGroupedPairs = LengthGroupedDataset


def read_rows(cfg: DPOConfig) -> tuple[list, list]:
    """Every row of the train and eval files, validated (one sentence per problem naming file, line, field)."""
    from rlhfkit.data import load_rows, preference_rows_from_rankings

    def read(path: str) -> list:
        rows = load_rows(path, cfg.data_kind, empty=cfg.data.empty, identical=cfg.data.identical).rows
        return preference_rows_from_rankings(rows) if cfg.data_kind == "ranking" else list(rows)

    return read(cfg.data.train_file), (read(cfg.data.eval_file) if cfg.data.eval_file else [])


def encode_rows(cfg: DPOConfig, tokenizer, rows: list, name: str) -> list:
    from rlhfkit.data import DataValidationError, TemplateError, encode_preference, format_encode_report
    from rlhfkit.trainers.metrics_log import say

    try:
        examples, report = encode_preference(tokenizer, rows, max_length=cfg.data.max_length,
                                             max_prompt_length=cfg.data.max_prompt_length,
                                             template=cfg.data.template)
    except TemplateError as exc:
        raise DataValidationError([str(exc)], f"dpo {name} data") from None
    say(format_encode_report(report, f"dpo {name}"))
    return examples


def load_models(cfg: DPOConfig):
    """``(policy, separate reference model or None)``, both in ``model.dtype``."""
    from rlhfkit.models.dropout import disable_dropout
    from rlhfkit.models.load import is_adapter_folder, load_causal_lm

    if cfg.lora.enabled and not cfg.lora.save_merged and is_adapter_folder(cfg.model.path):
        raise ConfigError(f"model.path {cfg.model.path} is a PEFT adapter folder: it is merged on load, so a "
                          "new adapter would sit on a base that is not on disk; set lora.save_merged=true")
    policy = load_causal_lm(cfg.model.path, cfg.model.dtype, merge_adapter=True,
                            attn_implementation=cfg.model.attn_implementation)
    config = policy.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and cfg.data.max_length > positions:
        raise ConfigError(f"data.max_length={cfg.data.max_length} exceeds the {positions} positions of the "
                          f"model in {cfg.model.path}; lower it")
    reference = None
    if cfg.reference is not None:
        reference = load_causal_lm(cfg.reference, cfg.model.dtype, merge_adapter=True,
                                   attn_implementation=cfg.model.attn_implementation)
        if reference.config.vocab_size != policy.config.vocab_size:
            raise ConfigError(f"reference {cfg.reference} has {reference.config.vocab_size} tokens in its "
                              f"vocabulary and model.path {policy.config.vocab_size}; π_ref must share the "
                              "policy's tokenizer")
    for model in (policy, reference):
        if model is not None and cfg.disable_dropout:
            disable_dropout(model)
    return policy, reference


def policy_autocast(cfg: DPOConfig, device) -> contextlib.AbstractContextManager:
    """The autocast the policy's forwards run in: with ``train.mixed_precision=bf16`` the loop's Accelerator
    wraps the prepared policy's forward in ``torch.autocast(device type, bfloat16)``; nothing otherwise.
    π_ref's log-probs, precomputed or on the fly, are computed under the same one: DPO's margin
    ``β·[(log π_θ − log π_ref)(y_w) − (…)(y_l)]`` is exactly 0 at the start only if the same weights give
    the same numbers (in float32 against bf16 it was ±0.2…±1.8 nats per pair, the loss 0.682 not ln 2)."""
    if cfg.train.mixed_precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_reference(cfg: DPOConfig, policy, reference_model, tokenizer, data: dict[str, list], device,
                      is_main: bool):
    """``(policy ready to train, {split: reference source}, {split: table or None}, reference weights hash)``.

    precompute: the tables are computed now with the *starting* weights (before LoRA is applied, before any
    update) or read from the cache. Both modes compute under :func:`policy_autocast`. on_the_fly: a frozen copy, the ``reference`` model, or with LoRA the
    policy with its adapters disabled (no copy).
    """
    from rlhfkit.models.dropout import disable_dropout
    from rlhfkit.models.lora import apply_lora
    from rlhfkit.trainers.determinism import derive_seed
    from rlhfkit.trainers.metrics_log import say

    tables: dict[str, ReferenceLogps | None] = dict.fromkeys(data)
    starting = reference_model if reference_model is not None else policy  # π_ref's weights, before LoRA
    reference_hash = weights_fingerprint(starting)
    autocast = partial(policy_autocast, cfg, device)
    if cfg.reference_mode == "on_the_fly":
        if reference_model is not None:
            source = FrozenReference(reference_model.to(device), autocast)
        elif cfg.lora.enabled:
            source = AdaptersOffReference()  # runs through the prepared policy: its autocast is built in
        else:
            source = FrozenReference(copy.deepcopy(policy).to(device), autocast)
        sources = dict.fromkeys(data, source)
    else:
        starting = starting.to(device)
        context = CacheContext(
            encode={"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length,
                    "template": cfg.data.template, "data_kind": cfg.data_kind, "empty": cfg.data.empty,
                    "identical": cfg.data.identical, "autocast": cfg.train.mixed_precision},
            tokenizer=tokenizer_fingerprint(tokenizer), reference=reference_hash)
        sources = {}
        for split, examples in data.items():
            with autocast():
                tables[split] = _precompute(cfg, split, starting, examples, tokenizer, context, is_main, say)
            sources[split] = PrecomputedReference(tables[split])
    del starting, reference_model  # in precompute mode a separate reference is no longer needed in memory
    if cfg.lora.enabled:
        # PEFT draws lora_A from the global torch RNG: seed it (a stream of its own, the global state left
        # as it was), or two runs of one recipe would differ
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.train.seed, "lora_init"))
            policy = apply_lora(policy, cfg.lora.settings())
        if cfg.disable_dropout:  # the adapters' own lora_dropout
            disable_dropout(policy)
    return policy.to(device), sources, tables, reference_hash


def _precompute(cfg, split, model, examples, tokenizer, context, is_main, say) -> ReferenceLogps:
    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.trainers.reference_cache import cached_reference_logps, compute_reference_logps

    data_file = cfg.data.train_file if split == "train" else cfg.data.eval_file
    result = cached_reference_logps(
        data_file, examples, context,
        lambda: compute_reference_logps(model, examples, pad_token_id=pad_token_id_for(tokenizer),
                                        batch_size=cfg.reference_batch_size),
        cache_dir=cfg.reference_cache_dir, write=is_main)
    how = "read from" if result.hit else "computed, cached in" if result.written else "computed; not cached in"
    say(f"dpo {split}: reference log-probs of {len(examples)} pairs {how} {result.path} "
        f"({result.seconds:.1f} s)")
    return result.table


def save_final(model, cfg: DPOConfig, tokenizer) -> Path:
    """``train.output_dir/final``: a standard folder, or a PEFT adapter folder (lora.save_merged=false);
    written beside and swapped in, so a crash never leaves a half folder named ``final``."""
    from rlhfkit.models.lora import save_policy

    out = Path(cfg.train.output_dir) / "final"
    tmp, old = out.with_name(".final.tmp"), out.with_name(".final.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    save_policy(model, tmp, merge=cfg.lora.save_merged, tokenizer=tokenizer,
                base_model_path=Path(cfg.model.path).resolve())
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def use_shared_prompt(cfg: DPOConfig, policy) -> bool:
    """``shared_prompt`` applies: a precomputed reference, and the live model passes the shared-row check."""
    from rlhfkit.models.forward import shared_prompt_matches_separate_rows
    from rlhfkit.trainers.metrics_log import say

    if not (cfg.shared_prompt and cfg.reference_mode == "precompute"):
        return False
    if shared_prompt_matches_separate_rows(policy):
        return True
    say(f"dpo: {type(policy).__name__} ignores the shared-prompt attention mask; one row per sequence instead")
    return False


def train(cfg: DPOConfig):
    """Run (or resume) DPO as configured; return the loop's ``RunSummary``. The final policy is saved in
    ``train.output_dir/final``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.trainers.loop import TrainLoop
    from rlhfkit.trainers.metrics_log import say

    # 1. every row of both files validated before any work; then tokenize
    train_rows, eval_rows = read_rows(cfg)
    tokenizer = load_tokenizer(cfg.model.path)
    data = {"train": encode_rows(cfg, tokenizer, train_rows, "train")}
    if eval_rows:
        data["eval"] = encode_rows(cfg, tokenizer, eval_rows, "eval")
    # 2. policy and reference (precomputed now, or kept for on-the-fly forwards)
    # device and rank, before the loop builds its Accelerator on the same state; CPU processes must say so here
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    # (no local name keeps a separate reference model alive once its table is computed)
    policy, sources, tables, reference_hash = prepare_reference(cfg, *load_models(cfg), tokenizer, data,
                                                                state.device, state.is_main_process)
    say(f"dpo: loss={cfg.loss} beta={cfg.beta} {cfg.loss_options() or ''} reference={cfg.reference_mode}"
        f"{' (adapters disabled)' if cfg.lora.enabled and cfg.reference is None else ''}")
    # 3. the shared loop
    objective = PreferenceObjective(cfg.loss, cfg.beta, cfg.loss_options())
    pad_id = pad_token_id_for(tokenizer)
    shared = use_shared_prompt(cfg, policy)
    eval_fn = None
    if "eval" in data:
        eval_pairs = [Pair(i, e) for i, e in enumerate(data["eval"])]
        eval_fn = partial(evaluate_pairs, pairs=eval_pairs,
                          collate=PreferenceCollator(pad_id, tables["eval"], shared),
                          step=DPOStep(objective, sources["eval"]),
                          batch_size=cfg.eval_batch_size or cfg.train.per_device_batch_size)
    pairs = [Pair(i, e) for i, e in enumerate(data["train"])]
    dataset: Any = pairs
    if cfg.group_by_length:
        global_batch = cfg.train.per_device_batch_size * cfg.train.grad_accum_steps * state.num_processes
        # what a row pads to: prompt + chosen + rejected (shared), or prompt + the longer response (two rows)
        lengths = [len(p.example.prompt_ids) + len(p.example.chosen_ids) + len(p.example.rejected_ids) if shared
                   else len(p) for p in pairs]
        dataset = LengthGroupedPairs(pairs, global_batch, cfg.train.seed, lengths=lengths)
    identity = RunIdentity(examples_fingerprint(data["train"]), reference_hash)
    loop = TrainLoop(cfg.train, policy, run_config=cfg, eval_fn=eval_fn, tokenizer=tokenizer,
                     stage_state={"dpo_inputs": identity}, safe_to_change=SAFE_TO_CHANGE)
    if cfg.group_by_length:
        dataset.loop = loop
    summary = loop.fit(dataset, PreferenceCollator(pad_id, tables["train"], shared),
                       DPOStep(objective, sources["train"]))
    # 4. the final policy, loadable by plain transformers / peft
    if summary.status in ("completed", "already_complete") and state.is_main_process:
        say(f"dpo: final policy saved in {save_final(loop.unwrapped_model, cfg, tokenizer)}")
    return summary


def main(args) -> int:
    """``rlhfkit dpo --config RECIPE key=value …``."""
    train(load_config(DPOConfig, args.config, args.overrides))
    return 0
