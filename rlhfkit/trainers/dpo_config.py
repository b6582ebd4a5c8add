"""``rlhfkit dpo`` settings: the typed config of the preference trainer and its cross-field rules.

One trainer, one loss picked by name: the pair losses of ``rlhfkit.preference_losses.PREFERENCE_LOSSES`` (dpo, ipo,
cdpo, rpo, orpo, simpo) and KTO on unpaired rows (``UNPAIRED_LOSSES``). Recipes: ``configs/dpo.yaml``,
``dpo_lora.yaml``, ``kto.yaml``, ``orpo.yaml``, ``simpo.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfkit.config import ConfigError, Recipe
from rlhfkit.engine.stage_config import DataConfig, LoraConfig, ModelConfig, check_trained_dtype
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.preference_losses import PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES, UNPAIRED_LOSSES

# Config keys that may differ when a run resumes: they change speed, memory or what is reported, never the
# trajectory of the weights beyond float rounding (a precomputed and an on-the-fly reference agree to ~1e-6).
SAFE_TO_CHANGE = ("reference_mode", "reference_batch_size", "reference_cache_dir", "eval_batch_size",
                  "lora.save_merged", "data.eval_file")
LOSS_NAMES = tuple(sorted({*PREFERENCE_LOSSES, *UNPAIRED_LOSSES}))
# Each loss's own hyper-parameters: config key -> (the loss function's argument, its default).
LOSS_OPTIONS: dict[str, dict[str, tuple[str, float]]] = {
    "cdpo": {"label_smoothing": ("label_smoothing", 0.1)},
    "rpo": {"rpo_alpha": ("alpha", 1.0)},
    "simpo": {"simpo_gamma": ("gamma", 0.5)},
    "kto": {"kto_desirable_weight": ("desirable_weight", 1.0),
            "kto_undesirable_weight": ("undesirable_weight", 1.0)},
}


@dataclass
class DPOLoraConfig(LoraConfig):
    save_merged: bool = True
    """Save ``final`` as merged weights (a plain model folder); false: the PEFT adapter folder (base =
    ``model.path``)."""


@dataclass
class DPOConfig(Recipe):
    """``rlhfkit dpo`` settings (a recipe: ``configs/dpo.yaml``; LoRA: ``configs/dpo_lora.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to start from (usually the SFT folder); also the reference unless ``reference`` is set."""
    reference: str | None = None
    """A model folder for π_ref; null = the starting model (with LoRA: the policy with adapters disabled).
    ORPO and SimPO use no reference: none is loaded, and setting one is an error."""
    data: DataConfig = field(default_factory=DataConfig)
    """``train_file`` / ``eval_file`` of preference rows; lengths, template, empty/identical policies."""
    data_kind: Literal["preference", "ranking", "unpaired"] = "preference"
    """Row format: ``{"prompt","chosen","rejected"}``; rankings flattened into all their K(K−1)/2 pairs; or
    ``unpaired`` ``{"prompt","completion","label"}`` (KTO only). KTO on pairs trains on each pair turned into
    two unpaired rows (chosen: good, rejected: bad)."""
    lora: DPOLoraConfig = field(default_factory=DPOLoraConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/dpo", lr=1e-6))
    """The shared loop; ``per_device_batch_size`` counts pairs (each micro-batch is 2× as many rows), or
    unpaired rows for KTO (each with a mismatched row for the KL estimate: 2× as many rows too)."""
    loss: str = "dpo"
    """dpo (sigmoid), ipo, cdpo (label smoothing), rpo (DPO + α·NLL on chosen), orpo (NLL + λ·log odds
    ratio, no reference), simpo (length-normalised margin − γ, no reference), kto (unpaired good/bad labels)."""
    beta: float = 0.1
    """β of DPO/cDPO/RPO/KTO (the implicit reward's scale, i.e. the KL strength); τ of IPO; λ of ORPO
    (Hong et al. use 0.1); β of SimPO (Meng et al. use ~2–2.5)."""
    label_smoothing: float | None = None
    """cdpo only: ε, the assumed probability that a label is flipped, in (0, 0.5); null = 0.1."""
    rpo_alpha: float | None = None
    """rpo only: α, the weight of the per-token NLL of the chosen response; null = 1.0."""
    simpo_gamma: float | None = None
    """simpo only: γ, the target reward margin (≥ 0); null = 0.5."""
    kto_desirable_weight: float | None = None
    """kto only: λ_D, the weight of good examples; null = 1.0. Keep λ_D·n_D / (λ_U·n_U) in [1, 4/3]."""
    kto_undesirable_weight: float | None = None
    """kto only: λ_U, the weight of bad examples; null = 1.0."""
    reference_mode: Literal["precompute", "on_the_fly"] = "precompute"
    """precompute: π_ref log-probs computed once before training, cached in ``reference_cache/`` (faster steps,
    no reference model in memory while training); on_the_fly: one no-grad reference forward per step."""
    reference_batch_size: int = 16
    """Pairs per forward when precomputing reference log-probs."""
    reference_cache_dir: str | None = None
    """Folder of the reference cache (shared by runs on the same data and reference); null = ``reference_cache/``
    in ``train.output_dir``. Never the data's folder, which may be shared or read-only."""
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

    @property
    def needs_reference(self) -> bool:
        """False for the reference-free losses (ORPO, SimPO): no π_ref is loaded or precomputed."""
        return self.loss not in REFERENCE_FREE_LOSSES

    @property
    def unpaired(self) -> bool:
        """The loss reads unpaired rows (KTO)."""
        return self.loss in UNPAIRED_LOSSES

    def validate(self) -> None:
        check_trained_dtype(self.model, self.lora)
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"loss: unknown preference loss {self.loss!r}; valid: {', '.join(LOSS_NAMES)}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        for loss, options in LOSS_OPTIONS.items():
            for key in options:
                if getattr(self, key) is not None and self.loss != loss:
                    raise ConfigError(f"{key} is used only by loss={loss} (loss is {self.loss!r}); "
                                      f"remove it ({key}=null) or set loss={loss}")
        if self.label_smoothing is not None and not 0 < self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in (0, 0.5), got {self.label_smoothing}")
        for key in ("rpo_alpha", "simpo_gamma", "kto_desirable_weight", "kto_undesirable_weight"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.data_kind == "unpaired" and not self.unpaired:
            raise ConfigError(f"data_kind=unpaired rows have one response each; loss={self.loss} needs pairs "
                              "(use loss=kto)")
        if self.unpaired and self.data_kind == "ranking":
            raise ConfigError("data_kind=ranking with loss=kto: a ranking's middle responses would be both good "
                              "(against worse ones) and bad; give unpaired rows or pairs")
        if self.reference is not None and not self.needs_reference:
            raise ConfigError(f"reference: loss={self.loss} uses no reference model; remove it (null)")
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
        """The chosen loss's hyper-parameters beside β (defaults filled in), named as the loss takes them."""
        return {argument: default if getattr(self, key) is None else getattr(self, key)
                for key, (argument, default) in LOSS_OPTIONS.get(self.loss, {}).items()}
