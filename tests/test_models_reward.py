"""Reward and value models: last-real-token scoring, plain-transformers agreement, normalisation, value init."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.models.heads import (
    get_score_normalization,
    init_scalar_head,
    normalization_from_scores,
    normalized_scores,
    score_sequences,
    set_score_normalization,
    token_values,
)
from rlhfkit.models.load import ModelLoadError
from rlhfkit.models.reward import (
    DEDICATED_PAD_TOKEN,
    load_reward_model,
    reward_model_from_causal_lm,
    save_scalar_model,
    value_model_from_reward_model,
)

try:
    from test_models_common import ARCHS, encode, model_for, pad_batch, saved_model_dir, tokenizer_for
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import ARCHS, encode, model_for, pad_batch, saved_model_dir, tokenizer_for


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("reward")


@pytest.fixture(scope="module")
def reward_models(root):
    """arch -> (reward model, reward tokenizer, saved folder)."""
    built = {}
    for arch in ARCHS:
        model, tok = reward_model_from_causal_lm(saved_model_dir(arch, root))
        out = save_scalar_model(model, tok, root / f"rm-{arch}")
        built[arch] = (model, tok, out)
    return built


def _score_alone(model, row):
    with torch.no_grad():
        return score_sequences(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_reward_model_keeps_the_sft_trunk_and_has_a_fresh_head(arch, reward_models):
    model, tok, _ = reward_models[arch]
    causal = model_for(arch)
    assert type(model).__name__.endswith("ForSequenceClassification") and model.config.num_labels == 1
    causal_trunk = getattr(causal, causal.base_model_prefix).state_dict()
    for name, tensor in getattr(model, model.base_model_prefix).state_dict().items():
        if tensor.shape == causal_trunk[name].shape:
            assert torch.equal(tensor, causal_trunk[name]), name
        else:  # only the embedding may grow, by the dedicated pad row (zero)
            assert tensor.shape[0] == causal_trunk[name].shape[0] + 1 and torch.all(tensor[-1] == 0), name
    assert model.score.weight.shape == (1, model.config.hidden_size) and model.score.weight.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_pad_is_never_eos(arch, reward_models):
    _, tok, _ = reward_models[arch]
    original = tokenizer_for(arch)
    assert tok.pad_token_id != tok.eos_token_id
    if original.pad_token is None:  # llama, gpt2: a new token at the first unused id
        assert tok.pad_token == DEDICATED_PAD_TOKEN and tok.pad_token_id == len(original)
    else:
        assert tok.pad_token == original.pad_token
    assert original.pad_token == (None if arch in ("llama", "gpt2") else original.pad_token)  # not mutated
    text = "what is 17 plus 25?"
    assert tok(text)["input_ids"] == original(text)["input_ids"]  # ids of real text unchanged


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_score_is_taken_at_the_last_real_token_even_when_it_is_eos(arch, side, reward_models):
    model, tok, _ = reward_models[arch]
    rows = encode(arch, eos=True)  # every row ends with EOS, which is also the pad of llama/gpt2 tokenizers
    pad_value = tokenizer_for(arch).eos_token_id  # pad == EOS: the hard case for id-based pooling
    ids, mask = pad_batch(rows, pad_value, side)
    with torch.no_grad():
        batch_scores = score_sequences(model, ids, mask)
    assert batch_scores.shape == (len(rows),) and batch_scores.dtype == torch.float32
    expected = torch.tensor([_score_alone(model, row) for row in rows])
    torch.testing.assert_close(batch_scores, expected, atol=1e-5, rtol=1e-5)
    # … and it is the EOS position that is read, not the token before it
    before_eos = torch.tensor([_score_alone(model, row[:-1]) for row in rows])
    assert not torch.allclose(batch_scores, before_eos, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_transformers_loads_it_and_gives_the_same_raw_score(arch, reward_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, _, folder = reward_models[arch]
    plain = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    plain_tok = AutoTokenizer.from_pretrained(folder)
    plain_tok.padding_side = "right"
    texts = [t + plain_tok.eos_token for t in ["what is 17 plus 25?", "kill", "I don't know the answer."]]
    batch = plain_tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    with torch.no_grad():
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        ours = score_sequences(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_load_reward_model_round_trip(arch, reward_models):
    model, tok, folder = reward_models[arch]
    again, again_tok = load_reward_model(folder)
    assert again_tok.pad_token_id == tok.pad_token_id == again.config.pad_token_id
    ids, mask = pad_batch(encode(arch), tok.pad_token_id, "right")
    with torch.no_grad():
        torch.testing.assert_close(score_sequences(again, ids, mask), score_sequences(model, ids, mask))


def test_from_an_in_memory_model_leaves_it_untouched():
    causal, tok = model_for("gpt2"), tokenizer_for("gpt2")
    before = {k: v.clone() for k, v in causal.state_dict().items()}
    model, reward_tok = reward_model_from_causal_lm(causal, tok, seed=3)
    assert reward_tok is not tok and tok.pad_token is None
    assert causal.config.vocab_size == len(tok) and causal.get_input_embeddings().weight.shape[0] == len(tok)
    assert all(torch.equal(before[k], v) for k, v in causal.state_dict().items())
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)  # the reward trunk is a copy, not shared
    assert torch.equal(causal.transformer.wte.weight, before["transformer.wte.weight"])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        reward_model_from_causal_lm(causal)


def test_head_init_follows_lm_human_preferences():
    head = torch.nn.Linear(4095, 1, bias=True)
    std = 1 / math.sqrt(4095 + 1)
    with torch.no_grad():
        head.bias.fill_(5.0)
    init_scalar_head(head, std, seed=0)
    assert head.bias.item() == 0.0
    assert abs(head.weight.std().item() / std - 1) < 0.05 and abs(head.weight.mean().item()) < 3 * std / 64
    init_scalar_head(head, 0.0)
    assert torch.all(head.weight == 0)


def test_default_head_std_and_seed(root):
    folder = saved_model_dir("llama", root)
    a, _ = reward_model_from_causal_lm(folder, seed=1)
    b, _ = reward_model_from_causal_lm(folder, seed=1)
    c, _ = reward_model_from_causal_lm(folder, seed=2)
    zero, _ = reward_model_from_causal_lm(folder, head_init_std=0.0)
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, c.score.weight)
    d = a.config.hidden_size
    # the N(0, 1) draw is the same for both seeds=1 models; scaling makes the std exactly proportional
    unit, _ = reward_model_from_causal_lm(folder, seed=1, head_init_std=1.0)
    torch.testing.assert_close(a.score.weight, unit.score.weight / math.sqrt(d + 1))
    ids = torch.tensor([encode("llama")[0]])
    assert _score_alone(zero, ids[0].tolist()) == 0.0


def test_normalization_round_trip_through_save(reward_models, tmp_path):
    model, tok, _ = reward_models["gpt_neox"]
    ids, mask = pad_batch(encode("gpt_neox"), tok.pad_token_id, "right")
    with torch.no_grad():
        raw = score_sequences(model, ids, mask)
    gain, bias = normalization_from_scores(raw, target_std=1.0)
    normalized_model, _ = reward_model_from_causal_lm(saved_model_dir("gpt_neox", tmp_path))
    normalized_model.load_state_dict(model.state_dict())
    set_score_normalization(normalized_model, gain, bias)
    save_scalar_model(normalized_model, tok, tmp_path / "rm")
    loaded, _ = load_reward_model(tmp_path / "rm")
    # the gain is folded into the bias-free head; only the constant is left outside the weights
    assert get_score_normalization(loaded) == pytest.approx((1.0, bias))
    assert not hasattr(loaded.config, "rlhfkit_score_gain") and not hasattr(loaded.config, "rlhfkit_score_bias")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        normalized = normalized_scores(loaded, ids, mask)
        torch.testing.assert_close(score_sequences(loaded, ids, mask), gain * raw)
        plain_scores = plain(input_ids=ids, attention_mask=mask).logits[:, 0]  # right padding: plain agrees
    torch.testing.assert_close(plain_scores, gain * raw)
    assert abs(normalized.mean().item()) < 1e-5 and normalized.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    torch.testing.assert_close(normalized, gain * raw + bias)
    readout = json.loads((tmp_path / "rm" / "rlhfkit_reward.json").read_text())
    assert readout["score_offset"] == pytest.approx(bias) and readout["eos_token"] == tok.eos_token
    assert get_score_normalization(model) == (1.0, 0.0)  # defaults when never set


def test_normalization_composes_and_legacy_folders_still_read(reward_models, tmp_path):
    model, tok, _ = reward_models["llama"]
    ids, mask = pad_batch(encode("llama"), tok.pad_token_id, "right")
    twice = value_model_from_reward_model(model)
    with torch.no_grad():
        raw = score_sequences(model, ids, mask)
        set_score_normalization(twice, 2.0, 1.0)
        set_score_normalization(twice, -0.5, 3.0)  # −0.5 · (2 raw + 1) + 3 = −raw + 2.5
        torch.testing.assert_close(normalized_scores(twice, ids, mask), -raw + 2.5)
    legacy = value_model_from_reward_model(model)  # a folder written before folding: keys, raw head
    legacy.config.rlhfkit_score_gain, legacy.config.rlhfkit_score_bias = 3.0, -1.0
    save_scalar_model(legacy, tok, tmp_path / "legacy")
    loaded, _ = load_reward_model(tmp_path / "legacy")
    with torch.no_grad():
        torch.testing.assert_close(normalized_scores(loaded, ids, mask), 3.0 * raw - 1.0)
        set_score_normalization(loaded, 2.0, 0.5)  # 2 · (3 raw − 1) + 0.5
        torch.testing.assert_close(normalized_scores(loaded, ids, mask), 6.0 * raw - 1.5)


def test_normalization_from_scores_hand_worked():
    gain, bias = normalization_from_scores(torch.tensor([1.0, 3.0]))
    assert (gain, bias) == (1.0, -2.0)
    gain, bias = normalization_from_scores(torch.tensor([1.0, 3.0]), target_std=2.0)
    assert gain == pytest.approx(2.0) and bias == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="zero spread"):
        normalization_from_scores(torch.tensor([2.0, 2.0]), target_std=1.0)
    with pytest.raises(ValueError, match="finite"):
        set_score_normalization(torch.nn.Linear(1, 1), float("nan"), 0.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_value_model_is_initialised_from_the_reward_model(arch, reward_models, tmp_path):
    model, tok, _ = reward_models[arch]
    reward = value_model_from_reward_model(model)  # an in-memory copy with normalisation
    set_score_normalization(reward, 0.5, -1.0)
    save_scalar_model(reward, tok, tmp_path / "rm")
    value = value_model_from_reward_model(tmp_path / "rm")
    assert type(value) is type(model)
    ids, mask = pad_batch(encode(arch), tok.pad_token_id, "left")
    with torch.no_grad():
        values = token_values(value, ids, mask)  # (B, T) state values
        raw_values = token_values(value, ids, mask, normalized=False)
        scores = normalized_scores(reward, ids, mask)
    assert values.shape == ids.shape
    torch.testing.assert_close(values[:, -1], scores)  # left padding: the last column is the last token
    torch.testing.assert_close(values, raw_values - 1.0)  # the gain 0.5 lives in the head
    # every prefix's value is the reward model's score of that prefix
    row = encode(arch)[0]
    for t in range(1, len(row) + 1):
        assert raw_values[0, ids.shape[1] - len(row) + t - 1].item() == pytest.approx(0.5 * _score_alone(model, row[:t]), abs=1e-5)
    # training the value model does not move the reward model
    with torch.no_grad():
        value.score.weight.add_(1.0)
    assert not torch.equal(value.score.weight, reward.score.weight)


def test_load_reward_model_errors(root, tmp_path):
    with pytest.raises(ModelLoadError, match="not a reward/value model"):
        load_reward_model(saved_model_dir("llama", root))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_reward_model(tmp_path / "missing")
