"""KL(π ‖ π_ref) per sequence: exact enumeration, Monte Carlo, invariances, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.evaluate.kl import (
    TokenizerMismatchError,
    check_same_tokenizer,
    per_sequence_kl,
    sequence_kl,
    token_kl_from_logits,
)
from rlhfkit.evaluate.sampling import PolicySamples, sample_policy
from rlhfkit.models.tiny import tiny_config, train_tokenizer
from rlhfkit.rollout.generate import generate

try:
    from test_evaluate_common import BigramLM, micro_policy, some_world_prompts, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import BigramLM, micro_policy, some_world_prompts, world_tokenizer


def test_token_kl_matches_a_hand_worked_two_token_case():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = ½ ln(2) + ½ ln(2/3)
    p_logits = torch.log(torch.tensor([[0.5, 0.5]]))
    q_logits = torch.log(torch.tensor([[0.25, 0.75]])) + 3.0  # a shift of the logits changes nothing
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert token_kl_from_logits(p_logits, q_logits).item() == pytest.approx(expected, abs=1e-6)
    assert token_kl_from_logits(p_logits, p_logits).item() == 0.0


# ---- exact enumeration on a bigram "model": vocab {a, b, EOS, BOS}, responses of at most 3 tokens ----------

A_, B_, EOS, BOS = 0, 1, 2, 3
MAX_LEN = 3


def all_responses() -> list[tuple[int, ...]]:
    """Every response the length-limited process can produce: ends with EOS, or stops at MAX_LEN tokens."""
    out = []
    for length in range(1, MAX_LEN + 1):
        for tokens in itertools.product(range(4), repeat=length):
            if EOS in tokens[:-1]:
                continue
            if length < MAX_LEN and tokens[-1] != EOS:
                continue
            out.append(tokens)
    return out


def log_prob(table: torch.Tensor, response: tuple[int, ...]) -> float:
    """log π(y | BOS) with plain Python arithmetic: Π_t softmax(table[prev])[y_t]."""
    total, previous = 0.0, BOS
    for token in response:
        row = [float(v) for v in table[previous]]
        total += row[token] - math.log(sum(math.exp(v) for v in row))
        previous = token
    return total


def bigram_batch(responses):
    width = 1 + max(len(r) for r in responses)
    ids = torch.zeros((len(responses), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids)
    for row, response in enumerate(responses):
        ids[row, : 1 + len(response)] = torch.tensor((BOS, *response))
        mask[row, : 1 + len(response)] = 1
        response_mask[row, 1 : 1 + len(response)] = 1
    return ids, mask, response_mask


def test_both_estimators_average_to_the_exact_sequence_kl_and_full_has_lower_variance():
    g = torch.Generator().manual_seed(0)
    p_table, q_table = 1.5 * torch.randn(4, 4, generator=g), 1.5 * torch.randn(4, 4, generator=g)
    responses = all_responses()
    assert len(responses) == 1 + 3 * 1 + 3 * 3 * 4  # EOS; xE; xyz (x, y ≠ EOS): 40 sequences
    log_p = [log_prob(p_table, r) for r in responses]
    log_q = [log_prob(q_table, r) for r in responses]
    weights = [math.exp(lp) for lp in log_p]
    assert sum(weights) == pytest.approx(1.0, abs=1e-9)
    exact = sum(w * (lp - lq) for w, lp, lq in zip(weights, log_p, log_q))
    assert exact > 0.3, "the two distributions should be far enough apart to make the test meaningful"

    full, k1 = per_sequence_kl(BigramLM(p_table), BigramLM(q_table), *bigram_batch(responses))
    # k1 on each sequence is exactly its log-ratio; both estimators are unbiased: their π-average is the KL
    assert k1.tolist() == pytest.approx([lp - lq for lp, lq in zip(log_p, log_q)], abs=1e-5)
    assert sum(w * f for w, f in zip(weights, full.tolist())) == pytest.approx(exact, abs=1e-5)
    assert sum(w * k for w, k in zip(weights, k1.tolist())) == pytest.approx(exact, abs=1e-5)
    variance = {name: sum(w * (v - exact) ** 2 for w, v in zip(weights, values.tolist()))
                for name, values in (("full", full), ("k1", k1))}
    assert variance["full"] < variance["k1"]
    assert bool((full >= 0).all()) and bool((k1 < 0).any())


def test_padding_and_batch_composition_do_not_change_per_sequence_values():
    g = torch.Generator().manual_seed(1)
    p, q = BigramLM(torch.randn(4, 4, generator=g)), BigramLM(torch.randn(4, 4, generator=g))
    responses = all_responses()
    full, k1 = per_sequence_kl(p, q, *bigram_batch(responses))
    for i in (0, 5, 39):
        alone_full, alone_k1 = per_sequence_kl(p, q, *bigram_batch([responses[i]]))
        assert alone_full.item() == pytest.approx(full[i].item(), abs=1e-6)
        assert alone_k1.item() == pytest.approx(k1[i].item(), abs=1e-6)


# ---- Monte Carlo on real (micro) transformers, sampled by the generation engine -------------------------------

VOCAB, PAD, LM_BOS, LM_EOS = 5, 0, 1, 2


def five_token_llama(seed: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", "micro", vocab_size=VOCAB, bos_token_id=LM_BOS, eos_token_id=LM_EOS,
                         pad_token_id=PAD)
    config.tie_word_embeddings = False  # scale the output head alone (scaling tied inputs too just copies tokens)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)  # sharper next-token distributions: a KL worth measuring
    return model


def exact_kl_two_tokens(policy, reference) -> float:
    """Σ_y π(y) log π(y)/π_ref(y) over every response of ≤ 2 tokens (EOS or the length limit ends it),
    each sequence scored alone with a plain forward."""
    responses = [(LM_EOS,)] + [(t, u) for t in range(VOCAB) if t != LM_EOS for u in range(VOCAB)]
    total = 0.0
    for response in responses:
        ids = torch.tensor([[LM_BOS, *response]])
        with torch.no_grad():
            lp = torch.log_softmax(policy(input_ids=ids).logits.double(), -1)[0]
            lq = torch.log_softmax(reference(input_ids=ids).logits.double(), -1)[0]
        log_p = sum(lp[t, token].item() for t, token in enumerate(response))
        log_q = sum(lq[t, token].item() for t, token in enumerate(response))
        total += math.exp(log_p) * (log_p - log_q)
    return total


def test_monte_carlo_estimates_on_generated_samples_match_exact_enumeration():
    policy, reference = five_token_llama(0), five_token_llama(1)
    exact = exact_kl_two_tokens(policy, reference)
    n = 3000
    output = generate(policy, [[LM_BOS]] * n, max_new_tokens=2, eos_token_id=LM_EOS, pad_token_id=PAD,
                      generator=torch.Generator().manual_seed(0), batch_size=1000)
    samples = PolicySamples(["x"] * n, [["?"]] * n, 1, seed=0, generation=output)
    estimate = sequence_kl(policy, reference, samples, batch_size=750)
    assert exact > 0.2 and estimate.n_sequences == n
    assert abs(estimate.nats_per_seq - exact) < 4 * estimate.stderr + 1e-3
    assert abs(estimate.k1_nats_per_seq - exact) < 4 * estimate.k1_stderr + 1e-3
    assert estimate.stderr < estimate.k1_stderr  # the full-vocabulary estimator is the less noisy one
    # batch composition and padding do not change the per-sequence values
    small = sequence_kl(policy, reference, samples.subset(range(40)), batch_size=7)
    assert small.per_sequence == pytest.approx(estimate.per_sequence[:40], abs=1e-5)


# ---- through sample_policy, with the world tokenizer ---------------------------------------------------------


def test_kl_of_a_policy_with_itself_is_zero_and_with_another_positive():
    prompts = some_world_prompts(1)
    policy = micro_policy(0, logit_scale=3.0)
    samples = sample_policy(policy, world_tokenizer(), prompts, 3, seed=0, max_new_tokens=10, batch_size=8)
    same = sequence_kl(policy, micro_policy(0, logit_scale=3.0), samples,
                       tokenizer=world_tokenizer(), reference_tokenizer=world_tokenizer())
    assert same.nats_per_seq == pytest.approx(0.0, abs=1e-6)
    assert same.k1_nats_per_seq == pytest.approx(0.0, abs=1e-5)
    other = sequence_kl(policy, micro_policy(1, logit_scale=3.0), samples)
    assert other.nats_per_seq > 0.1 and other.n_sequences == len(prompts) * 3
    assert float(other) == other.nats_per_seq
    assert set(other.metrics()) == {"kl/nats_per_seq", "kl/nats_per_seq_stderr", "kl/k1_nats_per_seq",
                                    "kl/k1_nats_per_seq_stderr", "kl/n_sequences"}


def test_kl_refuses_tempered_samples_text_only_samples_and_different_tokenizers():
    policy = micro_policy(0)
    prompts = some_world_prompts(1)[:2]
    hot = sample_policy(policy, world_tokenizer(), prompts, 1, seed=0, max_new_tokens=4, temperature=0.7)
    with pytest.raises(ValueError, match="temperature 1"):
        sequence_kl(policy, policy, hot)
    with pytest.raises(ValueError, match="no tokens"):
        sequence_kl(policy, policy, PolicySamples.from_texts(prompts, [["a"], ["b"]]))
    other = train_tokenizer(["completely different text for another tokenizer"] * 20, vocab_size=300,
                            style="world")
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ") as info:
        check_same_tokenizer(world_tokenizer(), other, ("policy", "baseline"))
    assert isinstance(info.value, UserError)
    check_same_tokenizer(world_tokenizer(), world_tokenizer())  # same object: fine


def test_kl_runs_with_dropout_off_and_restores_the_training_flags():
    from rlhfkit.models.tiny import build_tiny_model

    tok = world_tokenizer()
    policy = build_tiny_model("gpt2", "micro", tok, seed=0)
    policy.config.resid_pdrop = 0.5
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5  # a model with real dropout, handed over in training mode
    reference = build_tiny_model("gpt2", "micro", tok, seed=1).eval()
    samples = sample_policy(policy, tok, some_world_prompts(1)[:3], 2, seed=0, max_new_tokens=6)
    policy.train()
    first = sequence_kl(policy, reference, samples)
    second = sequence_kl(policy, reference, samples)
    assert first.per_sequence == second.per_sequence  # no dropout noise
    assert policy.training and not reference.training
