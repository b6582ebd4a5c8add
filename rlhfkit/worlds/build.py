"""``rlhfkit world build``: the world's tokenizer, its pretrained tiny base model and its data files, cached.

The only part of ``rlhfkit.worlds`` that trains a model (and so imports torch). Everything it writes goes
into one folder per build setting, ``{cache_dir}/world-s{seed}-{arch}-{size}`` (``…-tools`` for the tool world)::

    tokenizer/          byte-level BPE trained on the base corpus, the world's chat template, EOS and pad
    base/               the pretrained base model (standard HF folder) — the "text monster"
    pretrain/           the pretraining run (checkpoints, metrics.jsonl) — a re-run resumes it
    data/sft.jsonl      the SFT demonstrations fixed by the written spec (docs/world.md)
    data/prompts_train.jsonl, data/prompts_eval.jsonl
    build.json          what was built, with which settings, how long it took; written last

A second call with the same settings finds ``build.json`` and returns at once; a killed build resumes
its pretraining from the last checkpoint (the shared loop's promise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import ConfigError
from rlhfkit.worlds.corpus import BaseCorpus, build_base_corpus, build_sft_demonstrations
from rlhfkit.worlds.prompts import World

BUILD_MANIFEST = "build.json"
BUILD_FORMAT = 1


@dataclass
class WorldBuildConfig:
    seed: int = 0
    """Seeds the world (almanac, prompts, corpora) and the base model's initialisation and data order."""
    cache_dir: str = ".cache/rlhfkit"
    """Root of the cache; each setting gets its own sub-folder, reused when complete."""
    arch: str = "llama"
    """Architecture of the base model (rlhfkit.models.tiny.ARCHS)."""
    size: str = "small"
    """Size of the base model (rlhfkit.models.tiny.SIZES): small ~1.2M parameters pretrains in ~2.5 minutes (2 threads)."""
    vocab_size: int = 1024
    """BPE vocabulary; the world's ~715 words plus punctuation fit as whole tokens."""
    block_size: int = 64
    """Packed pretraining rows of this many tokens (packing is ~2x faster than one padded transcript per row)."""
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    epochs: float = 2.0
    """Passes over the packed base corpus (fractional allowed: the step count is rounded up). Two: one
    left 17 % of the SFT model's samples incoherent and its sums wrong as often as right (measured)."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """Pretrain under bfloat16 autocast (``bf16``), in float32 (``no``), or ``auto``: bf16 only where a
    0.2–0.5 s matmul probe finds it at least 1.25× faster than float32 on this machine
    (:mod:`rlhfkit.engine.runtime`; the choice and both rates are logged and kept in ``build.json``).
    Weights and optimizer stay float32 either way. On a CPU with native bf16 (AVX512-BF16/AMX) bf16 halved
    the small model's step (137 → 72 ms at 2 threads with sdpa attention; 484 → 239 ms for ``medium``); on
    one without (AVX2 only, like the 2-core development machine) bf16 matmuls run ~40× slower than float32,
    and a bf16 build takes hours. Held-out NLL of the small world: float32 0.631, bf16 0.632 (eager attention;
    0.632 vs 0.630 with sdpa).
    The cache key holds the *request*: a build made under ``auto`` is reused under ``auto`` whichever
    precision it resolved to (the probe never runs again for it, so the cache cannot flap between runs);
    an explicit ``no``/``bf16`` reuses only a build that ran in that precision."""
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    """Attention kernel while pretraining (the saved base model keeps transformers' default, sdpa). Packed rows
    carry a block-diagonal mask, and torch's CPU sdpa kernel with a mask spends more time in its backward than
    every matrix product of the step together: eager attention makes the small model's step ~27 % shorter
    (95 → 70 ms in isolation; 457 → 315 ms for ``large``), to the same loss."""
    threads: int = 0
    """torch threads for pretraining; 0 keeps torch's default (all cores)."""
    tools: bool = False
    """The tool world: its base corpus and SFT spec carry calculator calls (``calc: 7 plus 5 = 12.``; corpus
    ``TOOL_CORPUS_CONFIG``, spec ``SFT_SPEC_TOOLS``, docs/world.md §7). Cached in its own ``-tools`` folder; off, the
    world, its cache key and every figure measured on it are what they were before tools existed."""

    def validate(self) -> None:
        from rlhfkit.models.tiny import ARCHS, SIZES

        if self.arch not in ARCHS:
            raise ConfigError(f"arch: unknown architecture {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ConfigError(f"size: unknown size {self.size!r}; valid: {', '.join(SIZES)}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ConfigError(f"mixed_precision: expected auto, no or bf16, got {self.mixed_precision!r}")
        if self.attn_implementation not in ("eager", "sdpa"):
            raise ConfigError(f"attn_implementation: expected eager or sdpa, got {self.attn_implementation!r}")

    def folder(self) -> Path:
        return Path(self.cache_dir) / f"world-s{self.seed}-{self.arch}-{self.size}{'-tools' if self.tools else ''}"

    def settings(self) -> dict:
        """The fields as a dict, without ``tools`` when it is off: what the default world was keyed by before the
        tool world existed (its cache and the demo's stage fingerprints stay valid)."""
        out = dataclasses.asdict(self)
        if not self.tools:
            del out["tools"]
        return out


@dataclass
class WorldAssets:
    """Paths of a finished build."""

    root: Path
    tokenizer_dir: Path
    base_dir: Path
    sft_file: Path
    train_prompts_file: Path
    eval_prompts_file: Path
    manifest: dict

    @classmethod
    def at(cls, root: Path, manifest: dict) -> WorldAssets:
        return cls(root, root / "tokenizer", root / "base", root / "data" / "sft.jsonl",
                   root / "data" / "prompts_train.jsonl", root / "data" / "prompts_eval.jsonl", manifest)


def load_built(cfg: WorldBuildConfig) -> WorldAssets | None:
    """The finished build for ``cfg``, or None when there is none (or it was made with other settings)."""
    root = cfg.folder()
    try:
        manifest = json.loads((root / BUILD_MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("format") != BUILD_FORMAT or build_identity(manifest.get("config", {})) != build_identity(
            cfg.settings()) or manifest.get("world") != world_fingerprint(cfg.tools):
        return None
    if cfg.mixed_precision != "auto" and cfg.mixed_precision != built_precision(manifest):
        return None
    return WorldAssets.at(root, manifest)


def built_precision(manifest: dict) -> str:
    """The precision a finished build pretrained in (``no`` or ``bf16``; builds older than ``auto`` record
    only the configured one)."""
    return manifest.get("precision", {}).get("mixed_precision") or manifest.get("config", {}).get(
        "mixed_precision", "bf16")


def world_fingerprint(tools: bool = False) -> dict:
    """The world's own settings (prompts, corpus mix, SFT spec): a build made under others is stale. The default
    world's fingerprint leaves out the tool fields (both off), so it reads as it did before they existed."""
    from rlhfkit.worlds.prompts import WorldConfig

    corpus, spec = dataclasses.asdict(corpus_config(tools)), dataclasses.asdict(sft_spec(tools))
    if not tools:
        del corpus["tools"], spec["tool_share"]
    return json.loads(json.dumps({"world": dataclasses.asdict(WorldConfig()), "corpus": corpus, "sft_spec": spec}))


def corpus_config(tools: bool = False):
    """The base corpus's settings: ``CorpusConfig()``, or ``TOOL_CORPUS_CONFIG`` for the tool world."""
    from rlhfkit.worlds.corpus import TOOL_CORPUS_CONFIG, CorpusConfig

    return TOOL_CORPUS_CONFIG if tools else CorpusConfig()


def sft_spec(tools: bool = False):
    """The SFT spec: ``SFT_SPEC``, or ``SFT_SPEC_TOOLS`` for the tool world."""
    from rlhfkit.worlds.corpus import SFT_SPEC, SFT_SPEC_TOOLS

    return SFT_SPEC_TOOLS if tools else SFT_SPEC


def build_identity(config: dict) -> dict:
    """The settings that decide what is built: not where it is cached, nor how many threads built it; the
    precision is compared on its own (``auto`` accepts the precision a build resolved to, see
    ``WorldBuildConfig.mixed_precision``). ``tools`` off counts as absent: builds made before it existed match."""
    return {k: v for k, v in config.items()
            if k not in ("cache_dir", "threads", "mixed_precision") and not (k == "tools" and not v)}


def world_documents(corpus: BaseCorpus, tokenizer, seed: int) -> tuple[list[str], int]:
    """The base corpus as pretraining documents: fact lines as plain text, transcripts through the chat
    template (so the base model learns the transcript format it will be prompted with). Shuffled together."""
    import random

    from rlhfkit.data.templates import render_conversation

    docs = list(corpus.facts)
    docs += [render_conversation(tokenizer, prompt, response) for prompt, response in corpus.transcripts]
    random.Random(f"documents-{seed}").shuffle(docs)
    return docs, len(corpus.transcripts)


# How often each tool word is added to the tokenizer's training text when the corpus calls tools: as often as
# the world's commonest words, so BPE gives ` calc` and ` error` a token each. In the corpus itself they are too
# rare for that (measured at vocab 1024: ` calc` 2 tokens, ` error` 4), and a call read piece by piece is
# harder for a 1M model to learn to start.
TOOL_WORD_REPEATS = 50_000


def train_world_tokenizer(corpus: BaseCorpus, vocab_size: int):
    """The world's BPE tokenizer trained on ``corpus``; a corpus with calculator calls also gets the tool's words
    (``calculator.TOOL_WORDS``) as whole tokens. A corpus without calls trains exactly as before tools existed."""
    from rlhfkit.models.tiny import train_tokenizer
    from rlhfkit.worlds.calculator import TOOL_NAME, TOOL_WORDS

    texts = corpus.facts + [t for pair in corpus.transcripts for t in pair]
    if any(f"{TOOL_NAME}:" in response for _, response in corpus.transcripts):
        texts.append(" ".join(f" {word}" for word in TOOL_WORDS) * TOOL_WORD_REPEATS)
    return train_tokenizer(texts, vocab_size=vocab_size, style="world")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from rlhfkit.data import write_rows

    write_rows(path, rows)


def build_world(cfg: WorldBuildConfig) -> WorldAssets:
    """Build (or reuse) the world's tokenizer, base model and data files for ``cfg``."""
    import torch

    from rlhfkit.engine.metrics_log import say
    from rlhfkit.engine.train_config import TrainConfig
    from rlhfkit.models.tiny import build_tiny_model, count_parameters
    from rlhfkit.trainers.pretrain import PackedBlocks, pretrain, tokenize_documents

    cfg.validate()
    done = load_built(cfg)
    if done is not None:
        say(f"world: reusing {done.root} (base model {done.manifest['base_parameters']:,} parameters)")
        return done
    root = cfg.folder()
    if (root / BUILD_MANIFEST).exists():
        # A finished build made under other world settings: stale. (A build killed before its manifest
        # is not: its pretraining resumes from the last checkpoint.)
        say(f"world: {root} was built with other settings; rebuilding it")
        for stale in ("pretrain", "base", "tokenizer", "data", BUILD_MANIFEST):
            path = root / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = _pretraining_precision(cfg, root / "pretrain")
    say(f"world: precision {precision.reason}" if cfg.mixed_precision == "auto" else
        f"world: precision {'bf16 autocast' if precision.precision == 'bf16' else 'float32'} (set in the config)")
    started = time.perf_counter()
    world = World.build(cfg.seed)

    tokenizer_dir = root / "tokenizer"
    # built once: the tokenizer and the documents share it
    corpus = build_base_corpus(world, seed=cfg.seed, config=corpus_config(cfg.tools))
    tokenizer = train_world_tokenizer(corpus, cfg.vocab_size)
    tokenizer.save_pretrained(tokenizer_dir)
    docs, n_transcripts = world_documents(corpus, tokenizer, cfg.seed)
    held_out = max(1, len(docs) // 100)
    eval_docs, train_docs = docs[:held_out], docs[held_out:]
    t_corpus = time.perf_counter() - started

    n_rows = len(PackedBlocks(tokenize_documents(tokenizer, train_docs), cfg.block_size))
    max_steps = max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))
    train_cfg = TrainConfig(
        output_dir=str(root / "pretrain"), seed=cfg.seed, lr=cfg.lr, lr_schedule="cosine",
        warmup_steps=cfg.warmup_steps, max_steps=max_steps, per_device_batch_size=cfg.batch_size,
        weight_decay=0.01, max_grad_norm=1.0, save_every=max(50, max_steps // 4), eval_every=max_steps,
        log_every=max(10, max_steps // 20), save_total_limit=1, mixed_precision=precision.precision,
    )
    model = build_tiny_model(cfg.arch, cfg.size, tokenizer, seed=cfg.seed, max_positions=512)
    model.set_attn_implementation(cfg.attn_implementation)  # not saved: config.json never records it
    n_params = count_parameters(model)
    say(f"world: pretraining a {n_params:,}-parameter {cfg.arch} on {len(train_docs):,} documents "
        f"({n_rows:,} rows of {cfg.block_size} tokens, {max_steps} steps of {cfg.batch_size})")
    t0 = time.perf_counter()
    pretrain(train_docs, tokenizer, model, train_cfg, block_size=cfg.block_size, eval_texts=eval_docs)
    t_pretrain = time.perf_counter() - t0
    _install_base(root, train_cfg.output_dir)

    data = root / "data"
    _write_jsonl(data / "sft.jsonl", build_sft_demonstrations(world, sft_spec(cfg.tools)))
    _write_jsonl(data / "prompts_train.jsonl",
                 [{"prompt": p.text, "family": p.family} for p in world.train_prompts])
    _write_jsonl(data / "prompts_eval.jsonl",
                 [{"prompt": p.text, "family": p.family} for p in world.eval_prompts])
    final_nll = _last_metric(Path(train_cfg.output_dir) / "metrics.jsonl", "eval/pretrain/nll")
    manifest = {
        "format": BUILD_FORMAT, "config": cfg.settings(), "world": world_fingerprint(cfg.tools),
        "precision": precision.record(),
        "base_parameters": n_params,
        "vocab_size": len(tokenizer), "documents": len(docs), "transcripts": n_transcripts,
        "pretrain_rows": n_rows, "pretrain_steps": max_steps,
        "pretrain_tokens": max_steps * cfg.batch_size * cfg.block_size,
        "seconds_corpus": round(t_corpus, 1), "seconds_pretrain": round(t_pretrain, 1),
        "eval_nll": final_nll, "torch_threads": torch.get_num_threads(),
    }
    tmp = root / (BUILD_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(root / BUILD_MANIFEST)
    say(f"world: built in {time.perf_counter() - started:.0f} s (pretraining {t_pretrain:.0f} s); "
        f"held-out NLL {final_nll}")
    return WorldAssets.at(root, manifest)


def resolve_precision(cfg: WorldBuildConfig) -> WorldBuildConfig:
    """``cfg`` with ``auto`` replaced by what it means here: the precision of the build ``auto`` would reuse
    (finished, or killed and resumable), else the probe's choice (logged). For a caller that fingerprints
    what it builds (the demo's stages): the build it then makes records an explicit precision, which a
    later ``auto`` reuses, so the fingerprint stays the same from run to run."""
    from rlhfkit.engine.metrics_log import say

    if cfg.mixed_precision != "auto":
        return cfg
    done = load_built(cfg)
    if done is not None:
        return dataclasses.replace(cfg, mixed_precision=built_precision(done.manifest))
    choice = _pretraining_precision(cfg, cfg.folder() / "pretrain")
    say(f"world: precision {choice.reason}")
    return dataclasses.replace(cfg, mixed_precision=choice.precision)


def _pretraining_precision(cfg: WorldBuildConfig, pretrain_dir: Path):
    """The precision to pretrain in: as configured, or for ``auto`` the probe's choice — except that a killed
    build resumes in the precision its checkpoints were made in (a resumed run may not change it)."""
    from rlhfkit.engine import checkpoint as ckpt
    from rlhfkit.engine.runtime import PrecisionChoice, choose_precision

    killed = pretrain_dir.is_dir() and not (pretrain_dir.parent / BUILD_MANIFEST).exists()  # not a stale build
    if cfg.mixed_precision == "auto" and killed:
        latest, _ = ckpt.find_latest_checkpoint(pretrain_dir)
        if latest is not None:
            earlier = ckpt.read_json(latest / "config.json")["train"]["mixed_precision"]
            return PrecisionChoice(earlier, f"{'bf16 autocast' if earlier == 'bf16' else 'float32'}, as the "
                                   f"interrupted pretraining in {pretrain_dir} (resumed; not probed again)")
    return choose_precision(cfg.mixed_precision)


def _install_base(root: Path, pretrain_dir: str) -> None:
    """Move the pretraining run's final folder to ``base/`` (replacing any older one atomically)."""
    import os
    import shutil

    final, base = Path(pretrain_dir) / "final", root / "base"
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(final, root / ".base.tmp", dirs_exist_ok=True)
    os.replace(root / ".base.tmp", base)


def _last_metric(path: Path, key: str) -> float | None:
    value = None
    try:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                value = record[key]
    except FileNotFoundError:
        return None
    return value
