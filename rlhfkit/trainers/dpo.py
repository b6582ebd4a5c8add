"""The preference trainer: DPO and its family — IPO, cDPO, RPO, ORPO, SimPO on pairs, KTO on unpaired
good/bad labels — without a reward model or an RL loop.

    rlhfkit dpo --config configs/dpo.yaml train.output_dir=runs/dpo beta=0.1
    rlhfkit dpo --config configs/kto.yaml          # or: rlhfkit kto …  (loss=kto, unpaired rows)

A training step, on a micro-batch of B examples collated into one batch of 2B rows (for pairs: chosen, then
rejected; for KTO: each labelled completion, then a mismatched completion for the KL estimate):

1. reference log-probs ``log π_ref(y|x)`` (2B,): looked up in the table precomputed before training and
   cached in the run's folder (``reference_mode: precompute``), or one no-grad forward of π_ref (``on_the_fly``:
   a frozen copy, or with LoRA the policy with its adapters disabled); none for ORPO and SimPO, which load
   no reference at all;
2. one forward of the policy over the 2B rows; ``log π_θ(y|x)`` summed over response tokens only (2B,),
   and the response lengths (for the per-token averages of IPO, RPO, ORPO and SimPO). With a precomputed
   reference the pair is one row ``prompt + chosen + rejected`` (``shared_prompt``): the prompt is computed
   once, each response attends to it and to itself only, so the log-probs are those of two separate rows
   at the cost of P + C + R tokens instead of 2P + C + R;
3. the loss picked by name (``rlhfkit.preference_losses``; ``preference_objective.py``) per example; the loop
   averages it over the global batch (exact under accumulation), clips, guards and steps.

Config: ``dpo_config.py``; data and collation: ``preference_data.py``. Metrics (``docs/metrics.md (DPO)``):
``rewards/{chosen,rejected,margins,accuracies}``, ``logps/{chosen,rejected}``, ``logps/chosen_minus_ref``
(likelihood displacement when negative), ``kto/kl``, and the same under ``eval/`` on ``data.eval_file``.
The shared loop does resume; the reference table is keyed by the data and the *starting* weights, so a
resumed run reads the same table, and the data order is the loop's pure function of (seed, epoch,
position) — also with ``group_by_length``.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.collate import LengthGroupedDataset
from rlhfkit.engine.runtime import set_threads
from rlhfkit.engine.stage_config import data_sources
from rlhfkit.models.dropout import disable_dropout
from rlhfkit.trainers.dpo_config import SAFE_TO_CHANGE, DPOConfig, DPOLoraConfig
from rlhfkit.trainers.preference_data import (
    EncodedKTO,
    Pair,
    PreferenceCollator,
    encode_rows,
    examples_identity,
    read_rows,
)
from rlhfkit.trainers.preference_objective import KTOObjective, PreferenceObjective, objective_for
from rlhfkit.trainers.reference_cache import (
    AdaptersOffReference,
    CacheContext,
    FrozenReference,
    PrecomputedReference,
    ReferenceLogps,
    _to_device,
    batch_sequence_logprobs,
    model_device,
    tokenizer_fingerprint,
    weights_fingerprint,
)

__all__ = ["SAFE_TO_CHANGE", "DPOConfig", "DPOLoraConfig", "DPOStep", "EncodedKTO", "KTOObjective",
           "LengthGroupedPairs", "NoReference", "Pair", "PreferenceCollator", "PreferenceObjective",
           "encode_rows", "read_rows", "train"]


class NoReference:
    """The reference source of ORPO and SimPO: no π_ref, no forward, no table."""

    def logps(self, policy, batch: dict[str, Any]) -> None:
        return None


class DPOStep:
    """``step_fn(model, batch) -> (mean loss over the B pairs, metrics)`` for ``TrainLoop.fit``."""

    def __init__(self, objective: PreferenceObjective | KTOObjective, reference) -> None:
        self.objective = objective
        # anything with logps(policy, batch) -> (2B,) or None: see reference_cache.py, NoReference
        self.reference = reference

    def __call__(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = _to_device(batch, model_device(model))
        if "segment_ids" in batch and not isinstance(self.reference, PrecomputedReference | NoReference):
            raise ValueError("a shared-prompt batch needs a precomputed reference (its forwards take 2B rows)")
        # 1. reference log-probs (no gradient): from the precomputed table, a reference forward, or none
        ref_logps = self.reference.logps(model, batch)  # (2B,) or None
        # 2. one policy forward over the 2B responses (2B rows, or B shared-prompt rows); summed over
        # response tokens only
        policy_logps, lengths = preference_logprobs(model, batch)  # (2B,), (2B,)
        # 3. the loss by name, per example; mean over the micro-batch's examples (the loop weights them)
        out = self.objective(policy_logps, ref_logps, lengths, batch)  # (B,)
        metrics = self.objective.metrics(out, policy_logps, ref_logps, batch)
        mask = batch["attention_mask"]
        metrics["perf/padding_fraction"] = 1.0 - mask.sum() / mask.numel()
        return out.losses.mean(), metrics


# ----------------------------------------------------------------------------- data


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
    counts: dict[str, int] = {}  # KTO's per-label metrics are absent from chunks without that label
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        loss, metrics = step(model, collate(chunk))
        for name, value in {"loss": loss, **metrics}.items():
            if not name.startswith("perf/"):  # padding of evaluation batches says nothing about training
                sums[name] = sums.get(name, 0.0) + len(chunk) * float(value)
                counts[name] = counts.get(name, 0) + len(chunk)
    return {f"eval/{name}": total / counts[name] for name, total in sums.items()}


# The DPO name of the shared length-grouped view (kept: recipes and tests import it from here).
LengthGroupedPairs = LengthGroupedDataset


def load_models(cfg: DPOConfig):
    """``(policy, separate reference model or None)``, both in ``model.dtype``."""
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
                      is_main: bool, data_from: dict[str, Any] | None = None):
    """``(policy ready to train, {split: reference source}, {split: table or None}, reference weights hash)``.

    precompute: the tables are computed now with the *starting* weights (before LoRA is applied, before any
    update) or read from the cache. Both modes compute under :func:`policy_autocast`. on_the_fly: a frozen copy, the ``reference`` model, or with LoRA the
    policy with its adapters disabled (no copy). A reference-free loss (ORPO, SimPO): :class:`NoReference`.
    """
    from rlhfkit.data.order import derive_seed
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.lora import apply_lora

    tables: dict[str, ReferenceLogps | None] = dict.fromkeys(data)
    starting = reference_model if reference_model is not None else policy  # π_ref's weights, before LoRA
    reference_hash = weights_fingerprint(starting) if cfg.needs_reference else "none"
    autocast = partial(policy_autocast, cfg, device)
    if not cfg.needs_reference:  # ORPO, SimPO: no π_ref, no table, no forward
        sources = dict.fromkeys(data, NoReference())
    elif cfg.reference_mode == "on_the_fly":
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
            anchor = cache_anchor(cfg, split, (data_from or data_sources(cfg.data))[split])
            with autocast():
                tables[split] = _precompute(cfg, split, anchor, starting, examples, tokenizer, context, is_main,
                                            say)
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


def cache_anchor(cfg: DPOConfig, split: str, source: Any) -> Path:
    """The path the reference cache is keyed and placed by: the data file or folder, or for in-memory rows
    and ``datasets`` names a name under ``train.output_dir`` (the rows are in the key through their ids)."""
    if isinstance(source, str | Path) and Path(source).exists():
        return Path(source)
    return Path(cfg.train.output_dir) / f"{split}-dataset"


def _precompute(cfg, split, data_file, model, examples, tokenizer, context, is_main, say) -> ReferenceLogps:
    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.trainers.reference_cache import cached_reference_logps, compute_reference_logps

    result = cached_reference_logps(
        data_file, examples, context,
        lambda: compute_reference_logps(model, examples, pad_token_id=pad_token_id_for(tokenizer),
                                        batch_size=cfg.reference_batch_size),
        cache_dir=cfg.reference_cache_dir or Path(cfg.train.output_dir) / "reference_cache", write=is_main)
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
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.forward import shared_prompt_matches_separate_rows

    if not (cfg.shared_prompt and (cfg.reference_mode == "precompute" or not cfg.needs_reference)):
        return False
    if shared_prompt_matches_separate_rows(policy):
        return True
    say(f"dpo: {type(policy).__name__} ignores the shared-prompt attention mask; one row per sequence instead")
    return False


def train(cfg: DPOConfig, *, train_dataset: Any = None, eval_dataset: Any = None):
    """Run (or resume) DPO as configured; return the loop's ``RunSummary``. The final policy is saved in
    ``train.output_dir/final``. ``train_dataset`` / ``eval_dataset`` (a ``datasets.Dataset`` or a list of
    dicts) replace ``data.train_file`` / ``data.eval_file``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.data.templates import adopt_template
    from rlhfkit.engine.loop import TrainLoop
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.load import load_tokenizer

    set_threads(cfg.train.threads)  # before any work: encoding and reference passes use them too
    # 1. every row of both files validated before any work; then tokenize
    data_from = data_sources(cfg.data, train_dataset, eval_dataset)
    train_rows, eval_rows = read_rows(cfg, data_from)
    tokenizer = adopt_template(load_tokenizer(cfg.model.path), cfg.data.template)  # saved with the model
    data = {"train": encode_rows(cfg, tokenizer, train_rows, "train")}
    if eval_rows:
        data["eval"] = encode_rows(cfg, tokenizer, eval_rows, "eval")
    # 2. policy and reference (precomputed now, or kept for on-the-fly forwards)
    # device and rank, before the loop builds its Accelerator on the same state; CPU processes must say so here
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    # (no local name keeps a separate reference model alive once its table is computed)
    policy, sources, tables, reference_hash = prepare_reference(cfg, *load_models(cfg), tokenizer, data,
                                                                state.device, state.is_main_process, data_from)
    reference = cfg.reference_mode if cfg.needs_reference else "none (reference-free loss)"
    say(f"dpo: loss={cfg.loss} beta={cfg.beta} {cfg.loss_options() or ''} reference={reference}"
        f"{' (adapters disabled)' if cfg.lora.enabled and cfg.reference is None and cfg.needs_reference else ''}")
    # 3. the shared loop
    objective = objective_for(cfg.loss, cfg.beta, cfg.loss_options())
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
    identity = RunIdentity(examples_identity(data["train"]), reference_hash)
    loop = TrainLoop(cfg.train, policy, run_config=cfg, eval_fn=eval_fn, tokenizer=tokenizer,
                     stage_state={"dpo_inputs": identity}, safe_to_change=SAFE_TO_CHANGE)
    if cfg.group_by_length:
        dataset.loop = loop
    summary = loop.fit(dataset, PreferenceCollator(pad_id, tables["train"], shared),
                       DPOStep(objective, sources["train"]))
    # 4. the final policy, loadable by plain transformers / peft
    finished = summary.status in ("completed", "already_complete")
    trained = loop.final_model() if finished else None  # gathered from the shards under FSDP2 (a collective)
    if finished and state.is_main_process:
        say(f"dpo: final policy saved in {save_final(trained, cfg, tokenizer)}")
    loop.retire_checkpoints()  # only now that final/ is complete
    return summary


def main(args) -> int:
    """``rlhfkit dpo --config RECIPE key=value …`` (and ``rlhfkit kto …``: ``loss=kto`` by default)."""
    from rlhfkit.api import dpo

    dpo(load_config(DPOConfig, args.config, args.overrides))
    return 0
