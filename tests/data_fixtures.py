"""Shared helpers for the data tests: tiny tokenizers of the four styles, trained once per session."""

from __future__ import annotations

import functools

from rlhfkit.models.tiny import TOKENIZER_STYLES, train_tokenizer

STYLES = TOKENIZER_STYLES  # ("world", "llama", "gpt2", "qwen2")

_WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "said",
    "hello",
    "world",
    "what",
    "is",
    "one",
    "two",
    "three",
    "plus",
    "answer",
    "yes",
    "no",
]
TRAINING_TEXTS = [
    " ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(3 + i % 9)) + f" {i}\n\nUser: {i * 13}?"
    for i in range(400)
]


@functools.cache
def tiny_tokenizer(style: str):
    """A byte-level BPE tokenizer of ``style`` (vocab 400), shared by every test of the session."""
    return train_tokenizer(TRAINING_TEXTS, vocab_size=400, style=style)


@functools.cache
def metaspace_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace pre-tokenizer, as Llama 2 and Mistral use) with ChatML.

    Alone, a text gets a "▁" prefix ("the" → "▁the"); after the prompt's newline it does not ("t", "he"),
    so tokenizing a response on its own gives other ids than the model sees after the prompt.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhfkit.models.tiny import CHATML_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<|im_end|>", "<|im_start|>"]
    tok.train_from_iterator(
        TRAINING_TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", additional_special_tokens=specials[1:]
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf
