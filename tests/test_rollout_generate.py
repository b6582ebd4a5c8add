"""The generation engine: greedy = model.generate on every architecture, EOS handling, sampling statistics."""

import math

import pytest
import torch

from rlhfkit import ops
from rlhfkit.models.tiny import ARCHS, tiny_config
from rlhfkit.ops import sample_categorical
from rlhfkit.rollout import attention as attention_module
from rlhfkit.rollout import generate as generate_module
from rlhfkit.rollout.generate import generate, left_pad
from rlhfkit.rollout.sampling import filter_logits, sampling_logprobs

VOCAB = 96
PAD, BOS = 0, 1


def tiny_model(arch: str, size: str = "micro", seed: int = 0, logit_scale: float = 1.0, init_range: float = 0.3):
    """A random-weight model; ``logit_scale`` sharpens its next-token distributions (for sampling tests).

    Weights drawn with std ``init_range`` = 0.3 (not the usual 0.02) make greedy decoding wander through many
    tokens instead of repeating one, so comparisons and EOS positions are informative.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, size, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD)
    config.initializer_range = init_range
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    return model


def ragged_prompts(n: int = 7, seed: int = 0, min_len: int = 2, max_len: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [[BOS] + torch.randint(3, VOCAB, (k - 1,), generator=g).tolist() for k in lengths]


def hf_greedy(model, prompts, max_new_tokens, eos, pad=PAD, with_logits=False):
    """model.generate's greedy response ids (B, R) — and its (B, R, V) logits if ``with_logits``."""
    ids, mask = left_pad(prompts, pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
    response = out.sequences[:, ids.shape[1]:]
    return (response, torch.stack(out.logits, dim=1)) if with_logits else response


def an_eos_that_occurs(model, prompts, steps=12):
    """The token the greedy model emits most often mid-response: as EOS, it ends rows at various steps."""
    tokens = hf_greedy(model, prompts, steps, eos=VOCAB + 10)  # an id that never occurs: no stopping
    counts = torch.bincount(tokens[:, 2 : steps - 2].flatten(), minlength=VOCAB)
    return int(counts.argmax())


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_model_generate_with_left_padded_ragged_prompts(arch):
    model = tiny_model(arch)
    prompts = ragged_prompts(12)
    eos = an_eos_that_occurs(model, prompts, steps=16)
    expected, hf_logits = hf_greedy(model, prompts, 16, eos, with_logits=True)
    out = generate(model, prompts, max_new_tokens=16, greedy=True, eos_token_id=eos, pad_token_id=PAD,
                   return_logprobs=True)
    valid = out.response_mask.bool()
    hf_logprobs = torch.log_softmax(hf_logits, -1).gather(-1, expected.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.logprobs[valid], hf_logprobs[valid], atol=1e-5)
    # keeping finished rows, the same kernels run on the same cached values: logits equal bit for bit
    exact = generate(model, prompts, max_new_tokens=16, greedy=True, eos_token_id=eos, pad_token_id=PAD,
                     return_logprobs=True, drop_finished=False)
    assert torch.equal(exact.response_ids, expected)
    assert torch.equal(exact.logprobs[valid], sampling_logprobs(hf_logits[valid], expected[valid]))
    lengths = out.response_mask.sum(1)
    assert out.ended_with_eos.any() and len(set(lengths.tolist())) > 2, "rows should end at various steps"
    assert torch.equal(out.response_ids, expected)
    # the mask is 1 up to and including the first EOS, and padding after it
    for row, ended in zip(range(len(prompts)), out.ended_with_eos.tolist()):
        ids = out.response_ids[row].tolist()
        length = ids.index(eos) + 1 if ended else len(ids)
        assert out.response_mask[row].tolist() == [1] * length + [0] * (len(ids) - length)
        assert ids[length:] == [PAD] * (len(ids) - length)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_equals_each_prompt_alone(arch):
    # the semantic reason for position ids = cumsum(mask) − 1: padding must not change what a row sees
    model = tiny_model(arch)
    prompts = ragged_prompts(5, seed=1)
    batched = generate(model, prompts, max_new_tokens=10, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                       return_logprobs=True)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], max_new_tokens=10, greedy=True, eos_token_id=VOCAB + 1,
                         pad_token_id=PAD, return_logprobs=True)
        assert torch.equal(alone.response_ids[0], batched.response_ids[row])
        assert torch.allclose(alone.logprobs[0], batched.logprobs[row], atol=1e-5)


def test_wrong_position_ids_would_be_detected():
    # guard on the test above: numbering the padding (HF's default without position_ids) changes outputs of
    # absolute-position models (GPT-2); rotary models (Llama, Qwen2, NeoX) only see relative offsets
    model = tiny_model("gpt2")
    prompts = ragged_prompts(5, seed=1)
    ids, mask = left_pad(prompts, PAD)
    with torch.no_grad():
        shifted = model(input_ids=ids, attention_mask=mask).logits[:, -1]  # positions 0..P−1 include padding
        right = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    padded_rows = mask[:, 0] == 0
    assert not torch.allclose(shifted[padded_rows], right[padded_rows], atol=1e-4)


@pytest.mark.parametrize("preallocated", [True, False])
def test_finished_rows_are_dropped_without_changing_any_output(arch_model_cache, monkeypatch, preallocated):
    model = arch_model_cache
    prompts = ragged_prompts(40, seed=11)
    eos = an_eos_that_occurs(model, prompts, steps=20)
    kept_sizes = []
    original_keep = generate_module._Batch.keep

    def spy(self, local, cache):
        kept_sizes.append(len(local))
        return original_keep(self, local, cache)

    monkeypatch.setattr(generate_module._Batch, "keep", spy)
    if not preallocated:
        monkeypatch.setattr(attention_module, "_supports_preallocated_cache", lambda model: False)
    expected = hf_greedy(model, prompts, 20, eos)
    out = generate(model, prompts, max_new_tokens=20, greedy=True, eos_token_id=eos, pad_token_id=PAD,
                   return_logprobs=True)
    assert kept_sizes and kept_sizes[-1] < 30, "rows should have been dropped as they finished"
    assert torch.equal(out.response_ids, expected)
    reference = generate(model, prompts, max_new_tokens=20, greedy=True, eos_token_id=[eos], pad_token_id=PAD,
                         return_logprobs=True, batch_size=1)  # one row at a time: nothing to drop
    assert torch.equal(out.response_mask, reference.response_mask)
    assert torch.allclose(out.logprobs, reference.logprobs, atol=1e-5)
    kept_sizes.clear()
    generate(model, prompts, max_new_tokens=20, greedy=True, eos_token_id=eos, pad_token_id=PAD, drop_finished=False)
    assert kept_sizes == []


@pytest.fixture(scope="module")
def arch_model_cache():
    return tiny_model("llama", seed=3)


def test_rows_to_keep():
    f = torch.tensor
    keep = generate_module._rows_to_keep
    assert keep(f([False] * 12 + [True] * 3), min_rows=8) is None  # a fifth finished: not worth a copy
    assert keep(f([True, False] * 8), min_rows=8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    # 2 alive of 16: keep them plus the first 6 finished rows, to stay at 8 rows
    alive_two = f([True] * 16)
    alive_two[[4, 9]] = False
    assert keep(alive_two, min_rows=8).tolist() == [0, 1, 2, 3, 4, 5, 6, 9]
    assert keep(f([True] * 7 + [False]), min_rows=8) is None  # already at the floor


def test_stops_when_every_row_has_ended():
    model = tiny_model("llama")
    prompts = ragged_prompts(4, seed=2)
    first_tokens = generate(model, prompts, max_new_tokens=1, greedy=True, eos_token_id=VOCAB + 1,
                            pad_token_id=PAD).response_ids[:, 0].tolist()
    # every row's first greedy token counts as EOS: one step, then stop
    out = generate(model, prompts, max_new_tokens=20, greedy=True, eos_token_id=first_tokens, pad_token_id=PAD)
    assert out.response_ids.shape == (4, 1)
    assert out.ended_with_eos.all() and out.response_mask.tolist() == [[1]] * 4
    # no EOS at all: runs to max_new_tokens and nothing ended
    out = generate(model, prompts, max_new_tokens=6, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD)
    assert out.response_ids.shape == (4, 6) and not out.ended_with_eos.any() and out.response_mask.all()


def test_pad_equal_to_eos_is_fine():
    model = tiny_model("gpt2")
    prompts = ragged_prompts(6, seed=3)
    eos = an_eos_that_occurs(model, prompts)
    out = generate(model, prompts, max_new_tokens=12, greedy=True, eos_token_id=eos, pad_token_id=None)
    assert torch.equal(out.response_ids, hf_greedy(model, prompts, 12, eos, pad=eos))
    lengths = out.response_mask.sum(1)
    for row in range(len(prompts)):
        if out.ended_with_eos[row]:
            assert out.response_ids[row, lengths[row] - 1] == eos
            assert eos not in out.response_ids[row, : lengths[row] - 1].tolist()


def test_dynamic_cache_fallback_gives_the_same_tokens(monkeypatch):
    model = tiny_model("qwen2")
    prompts = ragged_prompts(6, seed=4)
    fast = generate(model, prompts, max_new_tokens=10, greedy=True, eos_token_id=5, pad_token_id=PAD)
    monkeypatch.setattr(attention_module, "_supports_preallocated_cache", lambda model: False)
    slow = generate(model, prompts, max_new_tokens=10, greedy=True, eos_token_id=5, pad_token_id=PAD)
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)


def test_batch_size_chunks_keep_input_order():
    model = tiny_model("llama")
    prompts = ragged_prompts(9, seed=5)
    whole = generate(model, prompts, max_new_tokens=8, greedy=True, eos_token_id=7, pad_token_id=PAD)
    chunked = generate(model, prompts, max_new_tokens=8, greedy=True, eos_token_id=7, pad_token_id=PAD, batch_size=4)
    for row in range(len(prompts)):
        n = int(whole.response_mask[row].sum())
        assert int(chunked.response_mask[row].sum()) == n
        assert torch.equal(chunked.response_ids[row, :n], whole.response_ids[row, :n])
        assert chunked.prompt_ids[row][chunked.prompt_mask[row].bool()].tolist() == prompts[row]


def test_logprobs_match_an_independent_forward_pass():
    model = tiny_model("gpt_neox", logit_scale=5.0)
    prompts = ragged_prompts(5, seed=6)
    temperature = 0.7
    out = generate(model, prompts, max_new_tokens=9, temperature=temperature, eos_token_id=11, pad_token_id=PAD,
                   generator=torch.Generator().manual_seed(0), return_logprobs=True)
    ids, mask = out.sequences()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    P = out.prompt_ids.shape[1]
    next_token_logits = logits[:, P - 1 : -1] / temperature  # position t predicts response token t
    expected = torch.log_softmax(next_token_logits, -1).gather(-1, out.response_ids.unsqueeze(-1)).squeeze(-1)
    valid = out.response_mask.bool()
    assert torch.allclose(out.logprobs[valid], expected[valid], atol=1e-4)
    assert (out.logprobs[~valid] == 0).all()


def test_entropy_and_readouts_match_an_independent_forward_pass():
    """Each step's entropy is that of softmax(logits / T) at the position the token was sampled from, and a
    readout of the hidden state there equals the readout of a full forward's final hidden state."""
    model = tiny_model("llama", logit_scale=3.0)
    prompts = ragged_prompts(16, seed=9)  # more than 8 rows: finished rows leave the batch (compaction)
    temperature = 0.8
    head = torch.nn.Linear(model.config.hidden_size, 1)
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(1))
    eos = list(range(3, 20))  # a sixth of the vocabulary: rows end at various steps
    out = generate(model, prompts, max_new_tokens=7, temperature=temperature, eos_token_id=eos, pad_token_id=PAD,
                   generator=torch.Generator().manual_seed(0), return_logprobs=True,
                   readout=lambda hidden: head(hidden).squeeze(-1))
    ids, mask = out.sequences()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                     output_hidden_states=True)
    P = out.prompt_ids.shape[1]
    logits = full.logits[:, P - 1 : -1] / temperature  # position P − 1 + t chose response token t
    log_p = torch.log_softmax(logits, -1)
    expected_entropy = -(log_p.exp() * log_p).sum(-1)
    with torch.no_grad():
        expected_readout = head(full.hidden_states[-1][:, P - 1 : -1]).squeeze(-1)
    valid = out.response_mask.bool()
    assert (valid.sum(1) < 4).sum() > 4 and valid.sum() > 30  # many rows ended early, so the batch was compacted
    assert torch.allclose(out.entropy[valid], expected_entropy[valid], atol=1e-4)
    assert torch.allclose(out.readouts[valid], expected_readout[valid], atol=1e-4)
    assert (out.entropy[~valid] == 0).all() and (out.readouts[~valid] == 0).all()
    assert expected_readout[valid].std() > 0.1  # the readout really varies with the hidden state
    plain = generate(model, prompts, max_new_tokens=7, eos_token_id=11, pad_token_id=PAD)
    assert plain.entropy is None and plain.readouts is None


def test_sample_categorical_follows_the_probabilities_and_never_draws_a_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_categorical(probs, generator) for _ in range(4000)])  # (4000, 3)
    counts = torch.bincount(draws[:, 0], minlength=6)
    assert counts[[0, 2, 5]].sum() == 0  # zero-probability tokens are never drawn (first and last included)
    stat, df = _chi_square(counts, probs[0])
    assert stat < df + 6 * math.sqrt(2 * df), (stat, df)
    assert (draws[:, 1] == 0).all() and (draws[:, 2] == 5).all()
    # one uniform per row per call: the same generator state gives the same draws
    assert torch.equal(sample_categorical(probs, torch.Generator().manual_seed(5)),
                       sample_categorical(probs, torch.Generator().manual_seed(5)))


def _first_token_distribution(model, prompt, temperature):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    return torch.softmax(logits / temperature, -1)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over bins with expected count ≥ 5 (the rest pooled into one bin); returns (χ², df)."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum().view(1)]).double()
    wanted = torch.cat([expected[big], expected[~big].sum().view(1)]).double()
    keep = wanted > 0
    stat = ((observed[keep] - wanted[keep]) ** 2 / wanted[keep]).sum().item()
    return stat, int(keep.sum()) - 1


def test_sampled_first_token_follows_softmax_of_logits_over_temperature():
    model = tiny_model("llama", logit_scale=20.0, init_range=0.02)
    prompt = ragged_prompts(1, seed=7)[0]
    draws, temperature = 6000, 1.5
    out = generate(model, [prompt] * draws, max_new_tokens=1, temperature=temperature, eos_token_id=VOCAB + 1,
                   pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out.response_ids[:, 0], minlength=VOCAB)
    stat, df = _chi_square(counts, _first_token_distribution(model, prompt, temperature))
    assert stat < df + 6 * math.sqrt(2 * df), (stat, df)  # about 6 standard deviations of a χ²(df)
    # the check has power: the same draws are far from the untempered distribution
    wrong, df_wrong = _chi_square(counts, _first_token_distribution(model, prompt, 1.0))
    assert wrong > df_wrong + 6 * math.sqrt(2 * df_wrong), (wrong, df_wrong)


def test_top_p_and_top_k_sample_only_inside_the_kept_set():
    model = tiny_model("llama", logit_scale=10.0, init_range=0.02)
    prompt = ragged_prompts(1, seed=7)[0]
    probs = _first_token_distribution(model, prompt, 1.0)
    order = probs.argsort(descending=True)
    mass = probs[order].cumsum(0)
    top_p = float(mass[3] + mass[4]) / 2  # between the mass of the top 4 and the top 5: the nucleus is the top 5
    nucleus = set(order[:5].tolist())
    assert 1 - mass[4] > 0.1, "the excluded tail must carry real mass, so sampling it would show"
    draws = 3000
    out = generate(model, [prompt] * draws, max_new_tokens=1, top_p=top_p, eos_token_id=VOCAB + 1,
                   pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    sampled = out.response_ids[:, 0]
    assert set(sampled.tolist()) == nucleus
    # inside the nucleus, frequencies follow the renormalised probabilities
    kept = torch.tensor(sorted(nucleus))
    counts = torch.bincount(sampled, minlength=VOCAB)[kept]
    stat, df = _chi_square(counts, probs[kept] / probs[kept].sum())
    assert stat < df + 6 * math.sqrt(2 * max(df, 1)), (stat, df)
    out = generate(model, [prompt] * 500, max_new_tokens=1, top_k=3, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                   generator=torch.Generator().manual_seed(2))
    assert set(out.response_ids[:, 0].tolist()) <= set(order[:3].tolist())


def test_filter_logits_hand_worked():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    inf = float("-inf")
    # top-p 0.7: sorted 0.5 (before 0), 0.3 (before 0.5), 0.15 (before 0.8 ≥ 0.7: dropped), 0.05 dropped
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, True, False, True]]
    # top-p 0.5: the most likely token alone reaches it
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits, top_k=2), torch.tensor([[logits[0, 0], inf, logits[0, 2], inf]]))
    assert torch.equal(filter_logits(logits), logits)
    assert torch.equal(filter_logits(logits, top_k=4, top_p=1.0), logits)


def test_sampling_is_reproducible_and_uses_only_the_given_generator():
    model = tiny_model("qwen2", logit_scale=5.0)
    prompts = ragged_prompts(6, seed=8)

    def sample(generator):
        return generate(model, prompts, max_new_tokens=8, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                        generator=generator, top_k=20, top_p=0.9).response_ids

    global_state = torch.get_rng_state()
    g = torch.Generator().manual_seed(123)
    state = g.get_state()
    first = sample(g)
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG must not be consumed"
    g.set_state(state)  # resume from a saved state
    assert torch.equal(sample(g), first)
    assert not torch.equal(sample(torch.Generator().manual_seed(124)), first)


def test_training_flags_restored_and_dropout_off_while_generating():
    model = tiny_model("gpt2")
    model.train()
    model.transformer.h[0].eval()  # a deliberately frozen block stays in eval mode
    flags = {name: m.training for name, m in model.named_modules()}
    seen = []
    hook = model.transformer.register_forward_hook(lambda mod, args, out: seen.append(mod.training))
    generate(model, ragged_prompts(2), max_new_tokens=3, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD)
    hook.remove()
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model

    base = tiny_model("llama")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)  # random B: the adapters change the outputs
    prompts = ragged_prompts(5, seed=9)
    out = generate(model, prompts, max_new_tokens=10, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD)
    ids, mask = left_pad(prompts, PAD)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                  eos_token_id=VOCAB + 1, pad_token_id=PAD)[:, ids.shape[1]:]
        with model.disable_adapter():
            plain = generate(model, prompts, max_new_tokens=10, greedy=True, eos_token_id=VOCAB + 1,
                             pad_token_id=PAD)
    assert torch.equal(out.response_ids, expected)
    assert not torch.equal(plain.response_ids, out.response_ids)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(top_k=-1), "top_k must be"),
        (dict(max_new_tokens=0), "max_new_tokens must be"),
        (dict(max_new_tokens=600), "exceeds the model's 512 positions"),
        (dict(eos_token_id=[]), "eos_token_id must be"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, message):
    model = tiny_model("llama")
    args = dict(prompts=[[1, 2, 3]], max_new_tokens=4, eos_token_id=2, pad_token_id=PAD) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, args.pop("prompts"), **args)


def test_outputs_can_enter_a_forward_pass_with_gradients():
    model = tiny_model("llama")
    out = generate(model, ragged_prompts(3), max_new_tokens=4, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                   generator=torch.Generator().manual_seed(0), return_logprobs=True)
    ids, mask = out.sequences()
    loss = model(input_ids=ids, attention_mask=mask).logits.mean() + out.logprobs.sum() * 0
    loss.backward()  # fails with "Inference tensors cannot be saved for backward" if outputs leak out
    assert model.get_input_embeddings().weight.grad is not None


def test_under_bf16_autocast_products_are_bf16_attention_float32_and_the_model_is_restored(monkeypatch):
    model = tiny_model("llama", size="small")
    prompts = ragged_prompts(6, seed=10)
    calls = []
    original = attention_module._sdpa_in_float32
    # (module, query, key, value, mask): keys and values come from the cache
    monkeypatch.setattr(attention_module, "_sdpa_in_float32", lambda *a, **k: calls.append(a[3].dtype) or original(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, prompts, max_new_tokens=6, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                       generator=torch.Generator().manual_seed(0), return_logprobs=True)
    assert model.config._attn_implementation == "sdpa"  # restored
    # one call per layer and step, on the float32 cache (the products ran in bf16: see the error below)
    assert len(calls) == model.config.num_hidden_layers * 6 and set(calls) == {torch.float32}
    ids, mask = out.sequences()
    P = out.prompt_ids.shape[1]

    def forward_logprobs(autocast: bool) -> torch.Tensor:  # the same tokens' log-probs from a full forward
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        return torch.log_softmax(logits[:, P - 1 : -1].float(), -1).gather(-1, out.response_ids[..., None])[..., 0]

    exact = forward_logprobs(autocast=False)
    bf16_error = (forward_logprobs(autocast=True) - exact).abs().max()  # what bf16 costs a plain forward
    error = (out.logprobs - exact).abs().max()
    assert 1e-5 < error < 2 * bf16_error, (error, bf16_error)  # bf16 products, no worse than a bf16 forward
    # without autocast nothing changes: float32 throughout, the model's own attention
    calls.clear()
    generate(model, prompts, max_new_tokens=2, eos_token_id=VOCAB + 1, pad_token_id=PAD)
    assert calls == []


@pytest.mark.parametrize("arch,preallocated", [("llama", True), ("qwen2", False), ("gpt_neox", True)])
def test_repeated_prompts_are_prefilled_once_with_the_same_samples(monkeypatch, arch, preallocated):
    """Each prompt n times in a row (a GRPO group): the prefill runs on the distinct prompts only, and the
    samples, log-probs, entropies and readouts equal those of prefilling every row."""
    model = tiny_model(arch, logit_scale=3.0)
    if not preallocated:
        monkeypatch.setattr(attention_module, "_supports_preallocated_cache", lambda model: False)
    prompts = [p for p in ragged_prompts(5, seed=12) for _ in range(3)]
    head = torch.nn.Linear(model.config.hidden_size, 1)
    prefilled_rows = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: prefilled_rows.append(kw["input_ids"].shape),
                                           with_kwargs=True)

    def sample():
        return generate(model, prompts, max_new_tokens=9, temperature=0.9, eos_token_id=list(range(3, 12)),
                        pad_token_id=PAD, generator=torch.Generator().manual_seed(3), return_logprobs=True,
                        readout=lambda hidden: head(hidden).squeeze(-1))

    with torch.no_grad():
        shared = sample()
        shared_prefill = prefilled_rows[0]
        monkeypatch.setattr(generate_module, "distinct_rows", lambda ids, mask: None)
        prefilled_rows.clear()
        full = sample()
    hook.remove()
    assert shared_prefill[0] == 5 and prefilled_rows[0][0] == 15  # distinct prompts only, then every row
    assert torch.equal(shared.response_ids, full.response_ids)
    assert torch.equal(shared.response_mask, full.response_mask)
    for name in ("logprobs", "entropy", "readouts"):
        difference = (getattr(shared, name) - getattr(full, name)).abs().max()
        assert difference < 1e-5, (name, difference)  # float rounding: the kernels see fewer rows
    assert not torch.equal(shared.response_ids[0], shared.response_ids[1])  # a group's rows differ


def test_distinct_rows():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])  # row 3: same ids, 0 is a real token
    first, inverse = ops.distinct_rows(ids, mask)
    assert first.tolist() == [0, 2, 3] and inverse.tolist() == [0, 0, 1, 2]
    assert ops.distinct_rows(ids[1:], mask[1:]) is None
