"""Shared pieces of the online-RL benchmark (``bench_ppo_vs_rloo.py``): the models, tokenizer and prompts both
sides load, and the timing records both workers print.

Built once by the orchestrator under ``.venv`` (rlhfkit's tiny-model configs), saved as standard Hugging Face
folders that rlhfkit and TRL then load alike:

- a word-level tokenizer: ``<pad>`` = 0, ``<s>`` = 1 (added in front of every text), words ``w2 … w2047``, and
  ``</s>`` = 2048 — one id *past* the models' vocabulary of 2048, so no model can ever emit it: every response
  runs to ``max_new_tokens`` on both sides and the generation work is identical. Word-level text round-trips
  exactly (decode → encode gives the same ids), so TRL's reward model, which re-tokenises prompt + completion
  text, reads the same ids as ours, which passes ids;
- ``policy/``: a Llama-style causal LM from ``rlhfkit.models.tiny`` (random weights, std 0.02);
- ``reward/``: a scalar-head (``LlamaForSequenceClassification``) model of the same size, its trunk another
  random causal LM (rlhfkit's value model starts from it, as InstructGPT's does);
- ``prompts.jsonl``: ``{"prompt": text}`` rows of random words, lengths uniform in prompt_len ± jitter.

The workers (``_rl_ours.py``, ``_rl_trl.py``) import only this module's stdlib part (``iteration_record``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

VOCAB = 2048
PAD, BOS = 0, 1
EOS = VOCAB  # past the model's vocabulary: never sampled


def worker_parser(minibatch_help: str, epochs_help: str):
    """The arguments both workers (ours and TRL's) share, so the two always describe the same work."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=4, help="including the first (warm-up)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--minibatch", type=int, default=16, help=minibatch_help)
    parser.add_argument("--epochs", type=int, default=1, help=epochs_help)
    return parser


def clock() -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process)."""
    return time.perf_counter(), time.process_time()


def iteration_record(generate: tuple, rollout: tuple, total: tuple) -> dict[str, float]:
    """One timed iteration from three (start, end) pairs of :func:`clock` readings: sampling only, the whole
    rollout (sampling, forwards, scoring) and the whole iteration. "experience" is the rollout without the
    sampling, "update" the iteration without the rollout (optimizer steps and bookkeeping); each phase in
    wall-clock seconds and, as ``cpu_…``, CPU seconds of the process (with one thread, the time it ran)."""
    record = {}
    for prefix, index in (("", 0), ("cpu_", 1)):
        g, r, t = (end[index] - start[index] for start, end in (generate, rollout, total))
        record.update({f"{prefix}generate": g, f"{prefix}experience": r - g, f"{prefix}update": t - r,
                       f"{prefix}total": t})
    return record


def summarise(iterations: list[dict[str, float]]) -> dict[str, float]:
    """Median of each phase over the timed iterations."""
    return {key: statistics.median(it[key] for it in iterations) for key in iterations[0]}


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # Each word token carries its leading space ("▁w5"), so a decoded completion starts with one and TRL's
    # prompt + completion text splits into exactly the same words.
    vocab = {"<pad>": PAD, "<s>": BOS, **{f"▁w{i}": i for i in range(2, VOCAB)}, "</s>": EOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)


def build_folders(root: Path, size: str, n_prompts: int, prompt_len: int, jitter: int, seed: int = 0) -> Path:
    """Write ``root/{policy,reward}/`` and ``root/prompts.jsonl`` (once per size); return ``root``."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model
    from rlhfkit.models.tiny import save_tiny, tiny_config

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()

    def causal_lm(model_seed: int):
        # no eos_token_id on the model: the tokenizer's (past the vocabulary) is the only one
        config = tiny_config("llama", size, vocab_size=VOCAB, bos_token_id=BOS, pad_token_id=PAD)
        torch.manual_seed(model_seed)
        return AutoModelForCausalLM.from_config(config)

    save_tiny(causal_lm(seed), tokenizer, root / "policy")
    reward, reward_tok = reward_model_from_causal_lm(causal_lm(seed + 1), tokenizer, seed=seed + 1)
    save_scalar_model(reward, reward_tok, root / "reward")
    g = torch.Generator().manual_seed(seed + 2)
    lengths = torch.randint(prompt_len - jitter, prompt_len + jitter + 1, (n_prompts,), generator=g).tolist()
    with open(root / "prompts.jsonl", "w", encoding="utf-8") as f:
        for n in lengths:  # n tokens with BOS
            words = torch.randint(2, VOCAB, (n - 1,), generator=g).tolist()
            f.write(json.dumps({"prompt": " ".join(f"w{i}" for i in words)}) + "\n")
    return root
