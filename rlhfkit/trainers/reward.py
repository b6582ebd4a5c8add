"""Reward model (``rlhfkit reward``): a scalar head on an SFT trunk, trained with the Bradley–Terry loss.

    rlhfkit reward --config configs/reward.yaml model.path=runs/sft/final data.train_file=prefs.jsonl

1. **Check before any work**: config, model folder, tokenizer, every row of the train / eval / reference
   files. Rows are preference rows ``{"prompt", "chosen", "rejected"}`` or ranking rows
   ``{"prompt", "responses", "ranking"}`` (``format=auto`` looks at the first row).
2. **Group** the comparisons of each prompt into one batch element (InstructGPT, Ouyang et al. 2022
   §3.5): a ranking of K is its K(K−1)/2 pairs; preference rows sharing a prompt are gathered
   (``group_preferences_by_prompt``). Each response of a group is scored **once**, then every pair of the
   group reads its two scores. With ``shared_prompt`` (default) a group is one row ``prompt + response_1 +
   … + response_K`` in which each response attends to the prompt and to itself only: the same scores as K
   rows, but the prompt is computed once (P + ΣR tokens instead of K·P + ΣR).
3. **Loss** per pair ``ℓ = −log σ(r_w − r_l − m)`` (Eq. 1 of InstructGPT; constant margin m as in Llama 2
   Eq. 2, ``margin``), averaged with ``pair_weighting``:

   * ``prompt`` (default, InstructGPT): each prompt weighs 1, shared equally by its pairs —
     ``L = (1/G) Σ_g (1/P_g) Σ_{p∈g} ℓ_p`` — so a prompt with many responses (K=9: 36 pairs) does not
     dominate the batch nor overfit its responses, which appear in K−1 pairs each;
   * ``pair``: every pair weighs the same, ``L = (1/P) Σ_p ℓ_p``.

   Both are exact over the global batch under gradient accumulation (``weight_fn`` counts groups or
   pairs). For one pair per prompt they coincide.
4. **Normalise** after training (lm-human-preferences, Ziegler et al. 2019 §2.2): gain and bias such that
   the *reference responses* score mean 0 (``normalize.mode=mean``) and std 1 (``mean_std``). The reference
   set is every distinct response of the training comparisons with its prompt (chosen and rejected
   alike, so 0 is the score of a typical response the annotators saw), or, with
   ``normalize.reference_file``, the ``{"prompt", "response"}`` rows of that file — e.g. samples of the SFT
   policy, as lm-human-preferences does, so that the PPO policy starts near 0. At most
   ``normalize.max_responses`` (a seeded sample). The gain is folded into the head's weight; the bias,
   which no bias-free transformers head can hold, is the score offset (see :mod:`rlhfkit.models.heads`).
5. **Save** ``train.output_dir/final``: ``AutoModelForSequenceClassification`` (num_labels=1) folder,
   merged if LoRA was used, with its tokenizer (pad token ≠ EOS: see :mod:`rlhfkit.models.reward`).
   Plain transformers returns the scaled score (read it at the final EOS: ``rlhfkit_reward.json`` and the
   folder's ``README.md`` say how); :func:`rlhfkit.models.normalized_scores` adds the offset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
class NormalizeConfig:
    mode: Literal["none", "mean", "mean_std"] = "mean"
    """After training: reference scores get mean 0 (``mean``), also std 1 (``mean_std``), or are left raw."""
    reference_file: str | None = None
    """``{"prompt", "response"}`` rows (e.g. SFT samples) to normalise on; null: the training responses."""
    max_responses: int = 4096
    """Reference responses scored at most (a seeded sample beyond that)."""

    def validate(self) -> None:
        if self.max_responses < 2:
            raise ConfigError(f"normalize.max_responses must be at least 2, got {self.max_responses}")


@dataclass
class RewardConfig(Recipe):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format: Literal["auto", "preference", "ranking"] = "auto"
    """Row kind of the data; ``auto``: ranking if the first row has ``responses``, else preference (any
    preference shape: explicit or implicit prompt, HH transcripts — docs/data-formats.md)."""
    margin: float = 0.0
    """Constant m in ``−log σ(r_w − r_l − m)``: the chosen must win by m before the loss flattens."""
    pair_weighting: Literal["prompt", "pair"] = "prompt"
    """``prompt``: each prompt's pairs share one unit of weight (InstructGPT); ``pair``: every pair one."""
    head_init_std: float | None = None
    """Std of the new scalar head's weights; null: 1/√(d_model + 1) (lm-human-preferences)."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    shared_prompt: bool = True
    """Score a group's responses in one row holding the prompt once (module docstring, step 2). Checked on the
    live model before training; a model whose attention ignores 4-D masks keeps one row per response."""
    group_by_length: bool = False
    """Fill each step with groups of similar length (less padding); the order stays a pure function of
    (seed, epoch), so resume is exact. Needs ``train.shuffle``."""

    def validate(self) -> None:
        check_trained_dtype(self.model, self.lora)
        if self.group_by_length and not self.train.shuffle:
            raise ConfigError("group_by_length=true draws its own seeded order and needs train.shuffle=true")
        if self.margin < 0:
            raise ConfigError(f"margin must be >= 0, got {self.margin}")
        if self.head_init_std is not None and self.head_init_std < 0:
            raise ConfigError(f"head_init_std must be >= 0 or null, got {self.head_init_std}")


# Stage keys a resumed run may change: evaluation never moves the training RNG, and the normalisation is
# computed after the last step.
SAFE_TO_CHANGE_ON_RESUME = ("data.eval_file", "normalize")


@dataclass
class RewardResult:
    final_dir: Path
    status: str
    metrics: dict[str, Any]  # the last step's log line
    gain: float  # normalised = gain · raw + bias
    bias: float
    reference: dict[str, float]  # raw mean/std of the reference scores and their count


def main(args) -> int:
    """``rlhfkit reward [--config FILE] key=value…``"""
    from rlhfkit.api import reward

    result = reward(load_config(RewardConfig, args.config, args.overrides))
    print(f"reward: {result.status}; model saved in {result.final_dir}")
    return 0


# ----------------------------------------------------------------------------- the loss (pure)


def pair_weights(pair_group: torch.Tensor, n_groups: int, weighting: str) -> torch.Tensor:
    """Weight of each pair in the micro-batch mean; the weights sum to 1. (P,) long -> (P,) float.

    ``pair``: ``1/P``. ``prompt``: ``1 / (G · P_g)`` for a pair of group g with P_g pairs (InstructGPT).
    """
    n_pairs = pair_group.numel()
    if weighting == "pair":
        return torch.full((n_pairs,), 1.0 / n_pairs)
    if weighting != "prompt":
        raise ValueError(f"unknown pair_weighting {weighting!r}; valid: prompt, pair")
    pairs_per_group = torch.bincount(pair_group, minlength=n_groups).double()  # (G,)
    if (pairs_per_group == 0).any():
        raise ValueError("every group needs at least one pair")
    return (1.0 / (n_groups * pairs_per_group[pair_group])).float()  # (P,)


def weight_units(batch: dict[str, Any], weighting: str) -> int:
    """What the loop weighs micro-batches by: groups (``prompt``) or pairs (``pair``)."""
    return batch["n_groups"] if weighting == "prompt" else batch["n_pairs"]


def group_scores(model, batch: dict[str, Any]) -> torch.Tensor:
    """Raw score of every response of a :func:`collate_comparisons` batch, each computed once. -> (N,) float32.

    One row per response (``collate_groups``): the head at each row's last real token. Shared-prompt rows:
    the head at each response's last token, the response having attended to the prompt and itself only.
    """
    from rlhfkit.models.forward import last_token_index, model_inputs, shared_prompt_inputs
    from rlhfkit.models.heads import scalar_head

    # Both layouts go through the whole model's forward, never the trunk alone: under DDP only a forward of the
    # wrapped module synchronises gradients (tests/test_multiprocess.py), and accelerate's autocast wraps it.
    # The head's output at every position is taken inside that forward, never by calling the head again
    # after it: under FSDP2 the head's weights are gathered only while the model's forward runs.
    if "segment_ids" not in batch:
        mask = batch["attention_mask"]
        inputs = model_inputs(model, batch["input_ids"], mask)
        rows, positions = torch.arange(mask.shape[0], device=mask.device), last_token_index(mask)  # (N,)
    else:
        inputs = shared_prompt_inputs(model, batch)
        rows, positions = batch["response_row"], batch["response_end"] - 1  # (N,)
    with capture_output(scalar_head(model)) as captured:
        returned = model(**inputs).logits  # the model's own pooling, not used but for the line below
    scores = captured["output"][rows, positions].squeeze(-1).float()  # (rows, T, 1) -> (N,)
    # FSDP2 prepares the backward of its root unit (embeddings, final norm, head) from the tensors the forward
    # returns: the loss must depend on one of them, or those weights would neither be gathered for the
    # backward nor have their gradients reduced. Adding a zero multiple adds that dependence and nothing else.
    return scores + 0.0 * returned.float().sum()


@contextlib.contextmanager
def capture_output(module: torch.nn.Module):
    """Record ``module``'s output during a forward: ``with capture_output(m) as captured: model(…)``."""
    captured: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _args, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


def collate_comparisons(groups: Sequence[Any], pad_token_id: int, shared_prompt: bool) -> dict[str, Any]:
    """``collate_groups`` (one row per response), or one shared-prompt row per group with the same keys for
    the pairs (``chosen_index``, ``rejected_index``, ``pair_group``, ``n_pairs``, ``n_groups``)."""
    from rlhfkit.data.collate import collate_groups, collate_shared_prompt

    if not shared_prompt:
        return collate_groups(groups, pad_token_id=pad_token_id)
    batch: dict[str, Any] = collate_shared_prompt([g.prompt_ids for g in groups], [g.response_ids for g in groups],
                                                  pad_token_id=pad_token_id)
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + len(g.response_ids))
    pairs = [(offsets[i] + c, offsets[i] + r, i) for i, g in enumerate(groups) for c, r in g.pairs]
    batch["chosen_index"], batch["rejected_index"], batch["pair_group"] = (
        torch.tensor(column, dtype=torch.long) for column in zip(*pairs))
    batch["n_pairs"], batch["n_groups"] = len(pairs), len(groups)
    return batch


def reward_step(model, batch: dict[str, Any], margin: float, weighting: str) -> tuple[torch.Tensor, dict]:
    """Bradley–Terry loss of a :func:`collate_comparisons` micro-batch, weighted mean over its pairs (step_fn)."""
    from rlhfkit.losses import bradley_terry_loss

    scores = group_scores(model, batch)  # (N,) each response once
    chosen, rejected = scores[batch["chosen_index"]], scores[batch["rejected_index"]]  # (P,)
    out = bradley_terry_loss(chosen, rejected, margin or None)
    weights = pair_weights(batch["pair_group"], batch["n_groups"], weighting).to(scores.device)  # (P,)
    loss = (out.losses * weights).sum()
    gap = (chosen - rejected).detach()
    metrics = {"reward/accuracy": (out.accuracies * weights).sum(), "reward/margin": (gap * weights).sum(),
               "reward/score_mean": scores.detach().mean(),
               "reward/score_std": scores.detach().std(unbiased=False)}
    return loss, metrics


@torch.no_grad()
def evaluate_pairs(model, groups: Sequence[Any], collate, batch_size: int, margin: float = 0.0) -> dict:
    """Held-out metrics over every pair (each pair counts once): loss, accuracy, margin, score mean/std."""
    from rlhfkit.losses import bradley_terry_loss

    losses, accuracies, gaps, all_scores = [], [], [], []
    for start in range(0, len(groups), batch_size):
        batch = collate(list(groups[start : start + batch_size]))
        scores = group_scores(model, batch)
        chosen, rejected = scores[batch["chosen_index"]], scores[batch["rejected_index"]]
        out = bradley_terry_loss(chosen, rejected, margin or None)
        losses.append(out.losses)
        accuracies.append(out.accuracies)
        gaps.append(chosen - rejected)
        all_scores.append(scores)
    scores = torch.cat(all_scores)
    return {"eval/reward/loss": torch.cat(losses).mean().item(),
            "eval/reward/accuracy": torch.cat(accuracies).mean().item(),
            "eval/reward/margin": torch.cat(gaps).mean().item(),
            "eval/reward/score_mean": scores.mean().item(),
            "eval/reward/score_std": scores.std(unbiased=False).item(),
            "eval/reward/pairs": float(sum(len(g.pairs) for g in groups))}


# ----------------------------------------------------------------------------- data


def detect_format(source: Any, columns: dict[str, str] | None = None) -> str:
    """``ranking`` if the first row has ``responses``, else ``preference`` (a malformed source is then
    reported by the validator, naming the line)."""
    from rlhfkit.data.formats import peek_keys

    return "ranking" if "responses" in peek_keys(source, columns) else "preference"


def load_comparison_groups(source: Any, cfg: RewardConfig, tokenizer,
                           split: str = "train") -> tuple[list[Any], dict[str, Any]]:
    """Validated rows → one comparison group per prompt → tokenized ``EncodedGroup``s, plus a report.
    ``source``: a path or in-memory rows (see ``load_rows``)."""
    from rlhfkit.data import (
        encode_groups,
        format_encode_report,
        group_preferences_by_prompt,
        load_rows,
        n_pairs,
        ranking_groups,
    )
    from rlhfkit.engine.metrics_log import say

    kind = detect_format(source, cfg.data.columns) if cfg.format == "auto" else cfg.format
    name = source_name(source, split)
    loaded = load_rows(source, kind, empty=cfg.data.empty, identical=cfg.data.identical,
                       columns=cfg.data.columns, transcripts=cfg.data.template != "raw", name=name)
    say(loaded.summary())
    groups = ranking_groups(loaded.rows) if kind == "ranking" else group_preferences_by_prompt(loaded.rows)
    encoded, report = encode_groups(tokenizer, groups, max_length=cfg.data.max_length,
                                    max_prompt_length=cfg.data.max_prompt_length, template=cfg.data.template)
    say(format_encode_report(report, f"reward {Path(name).name} ({len(groups)} prompts)"))
    pairs = sum(len(g.pairs) for g in encoded)
    summary = {"file": name, "format": kind, "rows_read": loaded.n_read, "rows_kept": len(loaded.rows),
               "rows_dropped_loading": loaded.n_dropped, "groups": len(encoded), "pairs": pairs,
               "pairs_if_rankings_were_flat": sum(n_pairs(len(g.responses)) for g in groups),
               "encode": dataclasses.asdict(report)}
    return encoded, summary


def load_reference_rows(path: str, cfg: RewardConfig, tokenizer) -> list[Any]:
    """``{"prompt", "response"}`` rows to normalise on, tokenized like the comparisons."""
    from rlhfkit.data import encode_sft, load_rows

    loaded = load_rows(path, "sft", empty=cfg.data.empty)
    return encode_sft(tokenizer, loaded.rows, max_length=cfg.data.max_length,
                      max_prompt_length=cfg.data.max_prompt_length, template=cfg.data.template)[0]


def training_references(groups: Sequence[Any]) -> list[Any]:
    """Every response of every training group with its prompt, once (``EncodedSFT`` for scoring)."""
    from rlhfkit.data import EncodedSFT

    return [EncodedSFT(g.prompt_ids, r, g.index, g.origin) for g in groups for r in g.response_ids]


# ----------------------------------------------------------------------------- model and normalisation


def build_reward_model(cfg: RewardConfig, tokenizer):
    """``(model, reward_tokenizer)``: the causal LM's trunk + a seeded scalar head, LoRA-wrapped if enabled."""
    from rlhfkit.data.order import derive_seed
    from rlhfkit.models.load import set_attention
    from rlhfkit.models.lora import apply_lora
    from rlhfkit.models.reward import reward_model_from_causal_lm
    from rlhfkit.trainers.sft import seeded_init

    model, reward_tok = reward_model_from_causal_lm(
        cfg.model.path, tokenizer, head_init_std=cfg.head_init_std,
        seed=derive_seed(cfg.train.seed, "reward_head", bits=32), dtype=cfg.model.dtype)
    set_attention(model, cfg.model.attn_implementation)
    if cfg.lora.enabled:
        with seeded_init(cfg.train.seed, "lora_init"):
            model = apply_lora(model, cfg.lora.settings())
    return model, reward_tok


@torch.no_grad()
def raw_scores(model, examples: Sequence[Any], pad_token_id: int, batch_size: int) -> torch.Tensor:
    """Raw scores of prompt+response examples (``EncodedSFT``), in batches. -> (N,) float32."""
    from rlhfkit.data.collate import collate_sft
    from rlhfkit.models.heads import score_sequences

    was_training = model.training
    model.eval()
    try:
        out = [score_sequences(model, b["input_ids"], b["attention_mask"])
               for b in (collate_sft(list(examples[i : i + batch_size]), pad_token_id=pad_token_id)
                         for i in range(0, len(examples), batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(out)


def normalize_scores(model, references: Sequence[Any], cfg: RewardConfig, pad_token_id: int) -> tuple:
    """Set gain/bias on ``model`` from the reference set; return ``(gain, bias, raw statistics)``."""
    from rlhfkit.data.order import derive_seed
    from rlhfkit.models.heads import normalization_from_scores, set_score_normalization

    references = list(references)
    if len(references) > cfg.normalize.max_responses:
        rng = random.Random(derive_seed(cfg.train.seed, "normalize"))
        references = rng.sample(references, cfg.normalize.max_responses)
    scores = raw_scores(model, references, pad_token_id, cfg.train.per_device_batch_size)
    stats = {"raw_mean": scores.mean().item(), "raw_std": scores.std(unbiased=False).item(),
             "count": float(scores.numel())}
    if cfg.normalize.mode == "none":
        return 1.0, 0.0, stats
    target_std = 1.0 if cfg.normalize.mode == "mean_std" else None
    gain, bias = normalization_from_scores(scores, target_std=target_std)
    set_score_normalization(model, gain, bias)
    return gain, bias, stats


# ----------------------------------------------------------------------------- the stage


def train_reward(cfg: RewardConfig, *, train_dataset: Any = None, eval_dataset: Any = None) -> RewardResult:
    """Run reward-model training described by ``cfg``; resume if ``train.output_dir`` holds its checkpoint.
    ``train_dataset`` / ``eval_dataset`` (a ``datasets.Dataset`` or a list of dicts) replace
    ``data.train_file`` / ``data.eval_file``."""
    from rlhfkit.data.collate import LengthGroupedDataset
    from rlhfkit.data.templates import adopt_template
    from rlhfkit.engine.checkpoint import save_folder_atomically, write_json
    from rlhfkit.engine.loop import TrainLoop
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.forward import shared_prompt_matches_separate_rows
    from rlhfkit.models.reward import save_scalar_model
    from rlhfkit.trainers.pretrain import FINAL_DIR
    from rlhfkit.trainers.sft import check_model_folder

    set_threads(cfg.train.threads)  # before any work: encoding and reference passes use them too
    sources = data_sources(cfg.data, train_dataset, eval_dataset)
    tokenizer = check_model_folder(cfg.model, cfg.data.max_length)
    adopt_template(tokenizer, cfg.data.template)  # the saved tokenizer carries the template trained with
    train_groups, report = load_comparison_groups(sources["train"], cfg, tokenizer)
    eval_groups, eval_report = (load_comparison_groups(sources["eval"], cfg, tokenizer, "eval")
                                if "eval" in sources else (None, None))
    references = (load_reference_rows(cfg.normalize.reference_file, cfg, tokenizer)
                  if cfg.normalize.reference_file else training_references(train_groups))
    model, reward_tok = build_reward_model(cfg, tokenizer)
    pad_id = reward_tok.pad_token_id
    shared = cfg.shared_prompt and shared_prompt_matches_separate_rows(model)
    if cfg.shared_prompt and not shared:
        say(f"reward: {type(model).__name__} ignores the shared-prompt attention mask; one row per response")

    def collate(groups):
        return collate_comparisons(groups, pad_id, shared)

    def evaluate(m):
        return evaluate_pairs(m, eval_groups, collate, cfg.train.per_device_batch_size, cfg.margin)

    loop = TrainLoop(cfg.train, model, run_config=cfg, tokenizer=reward_tok,
                     eval_fn=evaluate if eval_groups else None, safe_to_change=SAFE_TO_CHANGE_ON_RESUME,
                     reports={"data_report.json": {"train": report, "eval": eval_report}})  # after the resume check
    dataset: Any = train_groups
    if cfg.group_by_length:  # what a row pads to: the prompt and all its responses (shared) or the longest one
        lengths = [len(g.prompt_ids) + (sum if shared else max)(map(len, g.response_ids)) for g in train_groups]
        global_batch = cfg.train.per_device_batch_size * cfg.train.grad_accum_steps * loop.num_processes
        dataset = LengthGroupedDataset(train_groups, global_batch, cfg.train.seed, lengths=lengths)
        dataset.loop = loop
    summary = loop.fit(dataset, collate, lambda m, b: reward_step(m, b, cfg.margin, cfg.pair_weighting),
                       weight_fn=lambda b: weight_units(b, cfg.pair_weighting))
    trained = loop.final_model().eval()  # gathered from the shards under FSDP2 (every process calls it)
    gain, bias, stats = normalize_scores(trained, references, cfg, pad_id)
    say(f"reward: reference scores (raw) mean {stats['raw_mean']:+.4f} std {stats['raw_std']:.4f} over "
        f"{int(stats['count'])} responses; normalised = {gain:.4g} · raw {bias:+.4g}")

    def write(folder: Path) -> None:
        save_scalar_model(trained, reward_tok, folder)
        save_config(cfg, folder / "rlhfkit_reward.yaml")
        write_json(folder / "rlhfkit_normalization.json", {"gain": gain, "bias": bias, "mode": cfg.normalize.mode,
                                                           "reference": stats})

    final = Path(cfg.train.output_dir) / FINAL_DIR
    if loop.is_main_process:  # one writer: the ranks hold the same weights, and racing renames could clash
        save_folder_atomically(final, write)
    loop.accelerator.wait_for_everyone()  # no rank returns before the folder it names exists
    loop.retire_checkpoints()  # only now that final/ is complete
    say(f"reward: saved {final}")
    return RewardResult(final, summary.status, summary.last_metrics, gain, bias, stats)
