"""Collators: right padding for training, left padding for generation, one batch for chosen+rejected."""

from __future__ import annotations

import random
import types

import pytest
import torch
from data_fixtures import STYLES, tiny_tokenizer

from rlhfkit.data.collate import (
    collate_groups,
    collate_preference,
    collate_prompts,
    collate_sft,
    length_grouped_batches,
    pad,
    pad_token_id_for,
)
from rlhfkit.data.encode import (
    IGNORE_INDEX,
    EncodedGroup,
    EncodedPreference,
    EncodedPrompt,
    EncodedSFT,
    encode_prompt,
    encode_sft,
)
from rlhfkit.data.formats import PromptRow, SFTRow

PAD = 9


def test_pad_right_and_left_by_hand():
    values, mask = pad([[1, 2, 3], [4]], PAD, "right")
    assert values.tolist() == [[1, 2, 3], [4, PAD, PAD]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    values, mask = pad([[1, 2, 3], [4]], PAD, "left")
    assert values.tolist() == [[1, 2, 3], [PAD, PAD, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    values, mask = pad([[1, 2, 3], [4]], PAD, "right", pad_to_multiple_of=4)
    assert values.shape == (2, 4) and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert values.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="empty batch"):
        pad([], PAD)


def test_sft_batch_is_right_padded_with_labels_on_the_response_only():
    batch = collate_sft([EncodedSFT([1, 2], [3, 4, 5]), EncodedSFT([6], [7])], pad_token_id=PAD)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    I = IGNORE_INDEX
    assert batch["labels"].tolist() == [[I, I, 3, 4, 5], [I, 7, I, I, I]]
    padded = collate_sft([EncodedSFT([1, 2], [3, 4, 5])], pad_token_id=PAD, pad_to_multiple_of=8)
    assert padded["input_ids"].shape == (1, 8) and padded["labels"][0, 5:].tolist() == [I] * 3


def test_prompt_batch_is_left_padded_so_every_prompt_ends_in_the_last_column():
    batch = collate_prompts(
        [EncodedPrompt([1, 2, 3]), EncodedPrompt([4])], pad_token_id=PAD, pad_to_multiple_of=4
    )
    assert batch["input_ids"].tolist() == [[PAD, 1, 2, 3], [PAD, PAD, PAD, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def test_preference_batch_holds_chosen_then_rejected():
    examples = [EncodedPreference([1, 2], [3], [4, 5], 0), EncodedPreference([6], [7, 8, 9], [10], 1)]
    batch = collate_preference(examples, pad_token_id=PAD)
    assert batch["n_pairs"] == 2
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD], [6, 7, 8, 9], [1, 2, 4, 5], [6, 10, PAD, PAD]]
    assert batch["response_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert ((batch["labels"] != IGNORE_INDEX).long() == batch["response_mask"]).all()
    assert batch["chosen_index"].tolist() == [0, 1] and batch["rejected_index"].tolist() == [2, 3]
    # the index tensors pick pair i's sequences out of a (2B,) score vector; here a "score" is the last
    # real token, read where a reward head reads it (right padding: at attention_mask.sum(1) - 1)
    last = batch["attention_mask"].sum(1) - 1
    scores = batch["input_ids"].gather(1, last[:, None])[:, 0]
    assert scores[batch["chosen_index"]].tolist() == [3, 9] and scores[batch["rejected_index"]].tolist() == [
        5,
        10,
    ]


def test_group_batch_scores_all_pairs_of_each_group():
    k3 = EncodedGroup([1], [[2], [3, 3], [4]], [(2, 0), (2, 1), (0, 1)], 0)
    k2 = EncodedGroup([5, 5], [[6], [7]], [(1, 0)], 1)
    batch = collate_groups([k3, k2], pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [[1, 2, PAD], [1, 3, 3], [1, 4, PAD], [5, 5, 6], [5, 5, 7]]
    assert batch["chosen_index"].tolist() == [2, 2, 0, 4] and batch["rejected_index"].tolist() == [0, 1, 1, 3]
    assert batch["pair_group"].tolist() == [0, 0, 0, 1]
    assert (batch["n_pairs"], batch["n_groups"]) == (4, 2)
    assert batch["response_mask"].tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1]]


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_token_id_for(tiny_tokenizer("qwen2")) == tiny_tokenizer("qwen2").pad_token_id
    for style in ("llama", "gpt2"):
        tok = tiny_tokenizer(style)
        assert tok.pad_token_id is None and pad_token_id_for(tok) == tok.eos_token_id
    assert pad_token_id_for(types.SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


def test_length_grouped_batches_cover_every_index_deterministically_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1003)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3, mega_batch_factor=16)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) == 8 for b in batches if len(b) != 1003 % 8) and len(batches) == -(-1003 // 8)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3, mega_batch_factor=16)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=4, mega_batch_factor=16)

    def waste(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = list(range(1003))
    random.Random(3).shuffle(order)
    plain = [order[i : i + 8] for i in range(0, 1003, 8)]
    assert waste(batches) < 0.25 * waste(plain)
    dropped = length_grouped_batches(lengths, batch_size=8, seed=3, drop_last=True)
    assert all(len(b) == 8 for b in dropped) and len(dropped) == 1003 // 8


# Real architectures: padding must not change what the model computes on real tokens.
ARCH_STYLE = [("llama", "llama"), ("gpt2", "gpt2"), ("qwen2", "qwen2"), ("gpt_neox", "world")]


def micro_model(arch, tok):
    from rlhfkit.models.tiny import build_tiny_model

    torch.set_num_threads(1)
    return build_tiny_model(arch, "micro", tok, seed=0).eval()


@pytest.mark.parametrize("arch, style", ARCH_STYLE)
def test_right_padding_leaves_real_token_logits_unchanged(arch, style):
    tok = tiny_tokenizer(style)
    model = micro_model(arch, tok)
    rows = [SFTRow("hello", "the cat sat on the mat and said hello"), SFTRow("one two three plus", "yes")]
    examples, _ = encode_sft(tok, rows)
    batch = collate_sft(examples, pad_token_id=pad_token_id_for(tok))
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i, example in enumerate(examples):
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            assert torch.allclose(padded[i, : len(example)], alone, atol=1e-5)


@pytest.mark.parametrize("arch, style", ARCH_STYLE)
def test_left_padded_generation_matches_generating_each_prompt_alone(arch, style):
    tok = tiny_tokenizer(style)
    model = micro_model(arch, tok)
    prompts, _ = encode_prompt(tok, [PromptRow("hi"), PromptRow("what is one plus two and three plus one")])
    batch = collate_prompts(prompts, pad_token_id=pad_token_id_for(tok))
    assert (batch["attention_mask"][:, -1] == 1).all()
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad_token_id_for(tok), eos_token_id=None)
    with torch.no_grad():
        together = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :]
        for i, prompt in enumerate(prompts):
            alone = model.generate(input_ids=torch.tensor([prompt.prompt_ids]), **settings)[0, len(prompt) :]
            assert together[i].tolist() == alone.tolist()


@pytest.mark.parametrize("style", STYLES)
def test_encoded_rows_collate_on_every_tokenizer_style(style):
    tok = tiny_tokenizer(style)
    examples, _ = encode_sft(tok, [SFTRow("hi", "yes"), SFTRow("what is one", "the cat sat on the mat")])
    batch = collate_sft(examples, pad_token_id=pad_token_id_for(tok))
    for i, example in enumerate(examples):
        n = len(example)
        assert batch["input_ids"][i, :n].tolist() == example.input_ids
        assert batch["labels"][i, :n].tolist() == example.labels
        assert batch["attention_mask"][i].sum() == n
