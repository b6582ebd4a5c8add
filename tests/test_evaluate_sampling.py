"""Sampling K responses per prompt: rendering, decoding without special tokens, determinism under a seed."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data import render_prompt
from rlhfkit.evaluate.sampling import (
    PolicySamples,
    decode_response,
    eos_token_ids,
    sample_policy,
    sample_responses,
    stream_seed,
)

try:
    from test_evaluate_common import micro_policy, some_world_prompts, world, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import micro_policy, some_world_prompts, world, world_tokenizer


def test_same_seed_same_samples_other_seed_other_samples():
    model, tok, prompts = micro_policy(0), world_tokenizer(), some_world_prompts(1)
    first = sample_responses(model, tok, prompts, 3, seed=5, max_new_tokens=8, batch_size=4)
    again = sample_responses(model, tok, prompts, 3, seed=5, max_new_tokens=8, batch_size=4)
    other = sample_responses(model, tok, prompts, 3, seed=6, max_new_tokens=8, batch_size=4)
    assert first == again
    assert first != other
    assert len(first) == len(prompts) and all(len(row) == 3 for row in first)
    assert len({t for row in first for t in row}) > len(prompts), "samples of one prompt should differ"
    # one batch holding every row is the same batch whether batch_size is None or covers them all
    whole = sample_responses(model, tok, prompts, 3, seed=5, max_new_tokens=8, batch_size=None)
    assert whole == sample_responses(model, tok, prompts, 3, seed=5, max_new_tokens=8, batch_size=100)


def test_rows_are_prompt_major_rendered_with_the_chat_template_and_decoded_like_the_tokens():
    model, tok = micro_policy(1), world_tokenizer()
    prompts = some_world_prompts(1)
    samples = sample_policy(model, tok, prompts, 2, seed=0, max_new_tokens=12, batch_size=3)
    g = samples.generation
    assert g.response_ids.shape[0] == len(prompts) * 2
    eos = eos_token_ids(model, tok)
    for i, prompt in enumerate(prompts):
        rendered = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        for j in range(2):
            row = samples.row(i, j)
            real_prompt = g.prompt_ids[row][g.prompt_mask[row].bool()].tolist()
            assert real_prompt == rendered and tok.decode(real_prompt).endswith("<|assistant|>")
            tokens = g.response_ids[row][g.response_mask[row].bool()].tolist()
            if tokens[-1] in eos:
                tokens = tokens[:-1]
            kept = [t for t in tokens if t not in tok.all_special_ids]  # independent: filter ids, then decode
            assert samples.texts[i][j] == tok.decode(kept).strip()
    assert samples.prompts == prompts and samples.n_samples == 2 and samples.seed == 0


def test_decoding_drops_eos_what_follows_it_special_tokens_and_surrounding_space():
    tok = world_tokenizer()
    eos = [tok.eos_token_id]
    user = tok.convert_tokens_to_ids("<|user|>")
    ids = tok(" the answer is 12.", add_special_tokens=False)["input_ids"]
    assert decode_response(tok, ids + eos + tok("junk", add_special_tokens=False)["input_ids"], eos) == \
        "the answer is 12."
    half = len(ids) // 2
    assert decode_response(tok, ids[:half] + [user] + ids[half:], eos) == "the answer is 12."
    assert decode_response(tok, eos, eos) == ""


def test_world_prompts_are_stored_as_text_and_streams_differ():
    model, tok = micro_policy(0), world_tokenizer()
    objects = world().eval_prompts[:3]
    samples = sample_policy(model, tok, objects, 1, seed=0, max_new_tokens=4)
    assert samples.prompts == [p.text for p in objects]
    assert stream_seed(0, "policy") != stream_seed(0, "baseline")
    assert {stream_seed(s, r) for s in range(50) for r in ("policy", "baseline")} == set(range(100))
    with pytest.raises(ValueError, match="unknown sampling role"):
        stream_seed(0, "reference")


def test_subset_keeps_texts_and_tokens_together():
    model, tok = micro_policy(0), world_tokenizer()
    samples = sample_policy(model, tok, some_world_prompts(1), 2, seed=3, max_new_tokens=6)
    part = samples.subset([3, 1])
    assert part.texts == [samples.texts[3], samples.texts[1]]
    assert torch.equal(part.generation.response_ids[0], samples.generation.response_ids[samples.row(3, 0)])
    assert torch.equal(part.generation.response_ids[3], samples.generation.response_ids[samples.row(1, 1)])


def test_from_texts_requires_the_same_number_of_samples_per_prompt():
    ok = PolicySamples.from_texts(["p", "q"], [["a", "b"], ["c", "d"]])
    assert ok.n_samples == 2 and ok.generation is None and ok.mean_tokens() is None
    with pytest.raises(ValueError, match="same number"):
        PolicySamples.from_texts(["p", "q"], [["a", "b"], ["c"]])


def test_a_response_the_policy_was_trained_on_decodes_back_to_the_same_text():
    # what the judges read is exactly the demonstration text a policy learned to emit (byte-level BPE, EOS)
    import random

    from rlhfkit.data import encode_pair
    from rlhfkit.worlds import FAMILY_BEHAVIOURS, generate_response

    tok, rng = world_tokenizer(), random.Random(0)
    for prompt in world().eval_prompts[::50]:
        for behaviour in FAMILY_BEHAVIOURS[prompt.family]:
            text = generate_response(prompt, behaviour, rng, "polite")
            _, response_ids = encode_pair(tok, prompt.text, text)
            assert response_ids[-1] == tok.eos_token_id
            assert decode_response(tok, response_ids, [tok.eos_token_id]) == text
