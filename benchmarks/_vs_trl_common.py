"""What both workers of ``bench_vs_trl.py`` share: the word-level tokenizer, the data, the step recorder.

Imported by the rlhfkit worker (``.venv``) and the TRL worker (``.venv-trl``), so it needs only the
standard library, torch, ``tokenizers`` and ``transformers`` — never rlhfkit or TRL.

**Tokenizer.** One token per word: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then ``w4`` … ``w2047``;
words split on whitespace; no BOS added. A text of n words is n tokens on both sides, and the EOS both
trainers append to a response is one more, so the two sides see exactly the same token ids.

**Data.** Rows of random words, lengths in *tokens*: prompt ``48 ± 32``, response ``80 ± 32`` counting the
EOS the trainers append (uniform integers), or exactly 48 and 80 (``equal``). SFT rows
``{"prompt", "completion"}``; preference rows ``{"prompt", "chosen", "rejected"}`` with independent response
lengths. Responses start with a space so that ``prompt + response`` splits into the same words.

**Recorder.** Each worker calls ``Recorder.step_begins()`` when a step's compute starts (after its batch is
collated), ``Recorder.add_batch(batch)`` for each of its micro-batches and ``Recorder.step_ends()`` after
the optimizer step. A step's time is the gap between its end and the previous step's end: its forward,
backward and optimizer step, plus the previous step's logging and the collating of its own batch — the
same accounting on both sides. The final save comes after the last end, so it is never timed.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

VOCAB = 2048
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK}
PROMPT_TOKENS, RESPONSE_TOKENS, JITTER = 48, 80, 32


def word_tokenizer():
    """A ``PreTrainedTokenizerFast`` with one token per whitespace-separated word (module docstring)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIALS) | {f"w{i}": i for i in range(len(SPECIALS), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(len(SPECIALS), VOCAB)}" for _ in range(n))


def _length(rng: random.Random, mean: int, variant: str) -> int:
    return mean if variant == "equal" else rng.randint(mean - JITTER, mean + JITTER)


def make_rows(stage: str, variant: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` rows for ``stage`` ("sft", "reward" or "dpo"); ``variant`` "variable" or "equal"."""
    if variant not in ("variable", "equal"):
        raise ValueError(f"unknown data variant {variant!r}")
    rng = random.Random(f"{stage}-{variant}-{seed}")

    def prompt() -> str:
        return _words(rng, _length(rng, PROMPT_TOKENS, variant))

    def response() -> str:  # the trainers append EOS: one token fewer of words
        return " " + _words(rng, _length(rng, RESPONSE_TOKENS, variant) - 1)

    if stage == "sft":
        return [{"prompt": prompt(), "completion": response()} for _ in range(n)]
    return [{"prompt": prompt(), "chosen": response(), "rejected": response()} for _ in range(n)]


def row_tokens(stage: str, row: dict[str, str]) -> int:
    """Real tokens a trainer processes for one row: prompt + response + EOS, per sequence (a pair is two)."""
    def n(text: str) -> int:
        return len(text.split())

    if stage == "sft":
        return n(row["prompt"]) + n(row["completion"]) + 1
    return 2 * n(row["prompt"]) + n(row["chosen"]) + n(row["rejected"]) + 2


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- a job and its result


@dataclass
class Job:
    """One worker run: what to train, with which settings, and where to write the result."""

    side: str  # "rlhfkit" or "trl"
    arm: str  # name of the settings, e.g. "fastest", "defaults", "padding_free"
    stage: str  # "sft", "reward", "dpo"
    size: str  # "4m", "30m"
    variant: str  # "variable", "equal"
    model_dir: str  # a causal-LM folder with the word tokenizer
    data_file: str  # JSON Lines rows (make_rows)
    work_dir: str  # scratch folder for this run (output_dir, caches)
    result_file: str
    threads: int
    batch_size: int  # sequences (SFT) or pairs (reward, DPO) per step
    steps: int  # optimizer steps run; the first `warmup` are not timed
    warmup: int
    lr: float = 1e-5
    settings: dict = field(default_factory=dict)  # arm-specific switches, recorded in the result

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


class Recorder:
    """Start times and token counts of each optimizer step (module docstring)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cpu_starts: list[float] = []  # CPU seconds of this process (all its threads)
        self.cpu_ends: list[float] = []
        self.tokens: list[int] = []  # real tokens of the training sequences (a shared prompt counts per sequence)
        self.computed: list[int] = []  # token positions the model ran, padding excluded
        self.cells: list[int] = []  # token positions the model ran, padding included
        self.loss_tokens: list[int] = []  # tokens whose log-probability the loss takes (0 for a reward model)
        self.keys: list[int] = []  # causal attention (query, key) pairs needed: Σ over real tokens of position + 1
        self.notes: dict = {}

    def step_begins(self) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        for counts in (self.tokens, self.computed, self.cells, self.loss_tokens, self.keys):
            counts.append(0)

    def step_ends(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def add_batch(self, batch: dict, sequence_tokens: int | None = None) -> None:
        """A micro-batch of the current step. ``sequence_tokens``: its real tokens counted per training
        sequence, when that differs from the positions computed (a prompt shared by two responses)."""
        input_ids = batch["input_ids"]
        real = input_ids != PAD
        computed = int(real.sum())
        self.computed[-1] += computed
        self.tokens[-1] += computed if sequence_tokens is None else int(sequence_tokens)
        self.cells[-1] += int(input_ids.numel())
        self.loss_tokens[-1] += loss_tokens(batch) if self.stage != "reward" else 0
        if "position_ids" in batch:
            positions = batch["position_ids"].expand_as(input_ids)
        else:
            mask = batch["attention_mask"].long()
            positions = mask.cumsum(-1) - 1
        self.keys[-1] += int(((positions + 1) * real).sum())

    def write(self, job: Job, **extra) -> None:
        """The timed steps are warmup+1 … steps (1-based); the first step (no previous end) is always warm-up."""
        if job.warmup < 1 or len(self.ends) != len(self.starts):
            raise ValueError(f"need warmup >= 1 and an end for every start ({len(self.starts)}, {len(self.ends)})")
        durations = [self.ends[0] - self.starts[0]] + [b - a for a, b in zip(self.ends, self.ends[1:])]
        cpu = [self.cpu_ends[0] - self.cpu_starts[0]] + [b - a for a, b in zip(self.cpu_ends, self.cpu_ends[1:])]
        timed = list(range(job.warmup, len(durations)))

        def pick(values: list) -> list:
            return [values[i] for i in timed]

        result = {"job": json.loads(job.to_json()), "step_seconds": pick(durations), "step_cpu_seconds": pick(cpu),
                  "step_tokens": pick(self.tokens), "step_computed": pick(self.computed),
                  "step_cells": pick(self.cells), "step_loss_tokens": pick(self.loss_tokens),
                  "step_keys": pick(self.keys), "all_tokens": self.tokens, "all_seconds": durations,
                  "notes": self.notes, **extra}
        Path(job.result_file).write_text(json.dumps(result, indent=1))


def loss_tokens(batch: dict) -> int:
    """Tokens whose log-probability a causal-LM loss takes: the response mask, or labels after the shift."""
    for key in ("response_mask", "completion_mask"):
        if key in batch:
            return int(batch[key].sum())
    if "labels" in batch:
        return int((batch["labels"][..., 1:] != -100).sum())
    return 0
