"""NEFTune noise (Jain et al. 2023, Algorithm 1): its bound, its distribution, when it is applied, and that
the SFT trainer really trains on noised embeddings while evaluating on clean ones."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.models.neftune import add_neftune_noise, neftune, neftune_scale
from rlhfkit.models.tiny import build_tiny_model, train_tokenizer
from rlhfkit.trainers.sft import SFTConfig

try:
    from stage_helpers import cli, colour_rows, model_dir, read_metrics, tokenizer, write_jsonl
    from test_sft import manual_token_mean_nll, sft_args
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import cli, colour_rows, model_dir, read_metrics, tokenizer, write_jsonl
    from tests.test_sft import manual_token_mean_nll, sft_args


def test_scale_is_alpha_over_root_of_length_times_width():
    assert neftune_scale(5.0, 4, 16) == pytest.approx(5.0 / 8.0)  # √(4·16) = 8, worked by hand
    assert neftune_scale(10.0, 100, 64) == pytest.approx(10.0 / 80.0)


def test_noise_is_uniform_within_the_bound_with_the_uniform_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 50, 32)
    noisy = add_neftune_noise(x, alpha=10.0)
    bound = 10.0 / math.sqrt(50 * 32)
    noise = noisy - x
    assert noise.abs().max() <= bound * (1 + 1e-6)
    assert noise.abs().max() > 0.95 * bound  # it fills the interval, not a narrower one
    assert noise.mean().abs() < 0.02 * bound
    assert noise.var().item() == pytest.approx(bound**2 / 3, rel=0.03)  # Var U(−s, s) = s²/3


@pytest.fixture(scope="module")
def model():
    tok = train_tokenizer(["the cat is red. the dog is blue."] * 4, vocab_size=64, style="world")
    return build_tiny_model("llama", "micro", tok, seed=0)


def test_hook_noises_training_forwards_only_and_is_removed_on_exit(model):
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    embedding = model.get_input_embeddings()
    clean = embedding(ids).detach()
    bound = neftune_scale(5.0, 5, clean.shape[-1])
    with neftune(model, 5.0):
        model.train()
        noised = embedding(ids).detach()
        assert not torch.equal(noised, clean)
        assert (noised - clean).abs().max() <= bound * (1 + 1e-6)
        model.eval()
        assert torch.equal(embedding(ids), clean)  # evaluation and generation see clean embeddings
    model.train()
    assert torch.equal(embedding(ids), clean)  # hook gone after the block
    with neftune(model, 0.0):
        assert torch.equal(embedding(ids), clean)  # alpha 0: off
    model.eval()


def test_negative_alpha_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="neftune_alpha must be >= 0"):
        SFTConfig(neftune_alpha=-1.0).validate()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sft_trains_on_noised_embeddings_and_evaluates_clean(tmp_path, one_thread):
    from rlhfkit.data import encode_sft, load_rows
    from rlhfkit.models.load import load_causal_lm

    base = model_dir(tmp_path)
    demos = write_jsonl(tmp_path / "demos.jsonl", colour_rows(4))
    examples, _ = encode_sft(tokenizer(), load_rows(demos, "sft").rows, max_length=48, max_prompt_length=24)
    clean_first_loss = manual_token_mean_nll(load_causal_lm(base), examples)
    out = tmp_path / "neftune"
    assert cli(sft_args(base, demos, out, "train.shuffle=false", "train.max_steps=1", "train.lr=1e-3",
                        "train.per_device_batch_size=4", f"data.eval_file={demos}", "neftune_alpha=200")) == 0
    logged = read_metrics(out)[-1]
    # step 1's loss is taken on the untrained weights: only the noise can move it away from the clean loss
    assert abs(logged["train/loss"] - clean_first_loss) > 1e-3
    # the logged evaluation is the clean NLL of the saved weights (no hook left on the model)
    assert manual_token_mean_nll(load_causal_lm(out / "final"), examples) == pytest.approx(
        logged["eval/sft/nll"], abs=1e-5)
