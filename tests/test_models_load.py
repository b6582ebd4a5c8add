"""Loading local folders: every kind of bad folder is one sentence naming the folder; good ones load offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhfkit.models.load import ModelLoadError, load_causal_lm, load_tokenizer, resolve_dtype

try:
    from test_models_common import ARCHS, encode, model_for, saved_model_dir, tokenizer_for
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import ARCHS, encode, model_for, saved_model_dir, tokenizer_for


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _error(path, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    return message


def test_model_load_error_is_a_value_error():
    assert issubclass(ModelLoadError, ValueError)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    missing = tmp_path / "nowhere"
    assert f"'{missing}' does not exist" in _error(missing)
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    assert f"'{a_file}' is a file, not a folder" in _error(a_file)


def test_folder_without_config(tmp_path):
    assert f"'{tmp_path}' is not a Hugging Face model folder: it has no config.json" in _error(tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "config.json is not valid JSON"),
        ("[1, 2]", "config.json does not hold a JSON object"),
        ('{"hidden_size": 8}', "config.json has no model_type"),
        ('{"model_type": "no_such_arch"}', "model_type 'no_such_arch' is not known to transformers"),
    ],
)
def test_bad_config_json(tmp_path, content, expected):
    (tmp_path / "config.json").write_text(content)
    message = _error(tmp_path)
    assert str(tmp_path) in message and expected in message


def test_config_of_a_model_that_is_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    message = _error(tmp_path)
    assert str(tmp_path) in message and "'vit' model, which is not a causal language model" in message


def test_config_without_weights(root, tmp_path):
    shutil.copy(saved_model_dir("llama", root) / "config.json", tmp_path / "config.json")
    message = _error(tmp_path)
    assert f"'{tmp_path}' has a config.json but no weights" in message


def test_corrupt_weights_file(root, tmp_path):
    shutil.copy(saved_model_dir("gpt2", root) / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01 definitely not safetensors")
    message = _error(tmp_path)
    assert message.startswith(f"could not load the causal LM in '{tmp_path}'")


def test_weights_missing_a_tensor_are_an_error_not_a_random_init(root, tmp_path):
    from safetensors.torch import load_file, save_file

    good = saved_model_dir("qwen2", root)
    shutil.copy(good / "config.json", tmp_path / "config.json")
    tensors = load_file(str(good / "model.safetensors"))
    dropped = sorted(k for k in tensors if "layers.1.mlp.up_proj" in k)[0]
    del tensors[dropped]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    message = _error(tmp_path)
    assert f"'{tmp_path}' does not match its config.json" in message and "missing" in message


def test_weights_of_the_wrong_shape(root, tmp_path):
    from safetensors.torch import load_file, save_file

    good = saved_model_dir("llama", root)
    shutil.copy(good / "config.json", tmp_path / "config.json")
    tensors = load_file(str(good / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert str(tmp_path) in _error(tmp_path)


def test_reward_model_folder_is_not_a_causal_lm(root, tmp_path):
    from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model

    model, tok = reward_model_from_causal_lm(saved_model_dir("gpt2", root))
    save_scalar_model(model, tok, tmp_path)
    message = _error(tmp_path)
    assert "sequence-classification model" in message and "load_reward_model" in message


def test_adapter_folder_problems(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert f"adapter folder '{tmp_path}' has no adapter weights" in _error(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert "does not name its base model" in _error(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/some-hub-model"}))
    message = _error(tmp_path)
    assert "'org/some-hub-model'" in message and "is not a local folder" in message


def test_tokenizer_folder_without_tokenizer(tmp_path):
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_good_folder_loads_offline_with_identical_logits(arch, root):
    folder = saved_model_dir(arch, root)
    loaded = load_causal_lm(folder)
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    ids = torch.tensor([encode(arch)[0]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model_for(arch)(ids).logits, atol=1e-6)


def test_dtype_names():
    assert resolve_dtype(None) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_bfloat16_load(root):
    model = load_causal_lm(saved_model_dir("llama", root), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ARCHS)
def test_pad_token_policy(arch, root):
    original = tokenizer_for(arch)
    tok = load_tokenizer(saved_model_dir(arch, root))
    assert tok.pad_token_id is not None
    if original.pad_token is None:  # llama and gpt2 ship none: EOS becomes the padding value
        assert tok.pad_token == tok.eos_token
    else:  # an existing pad token is kept as it is
        assert tok.pad_token == original.pad_token and tok.pad_token != tok.eos_token
    assert tok.padding_side == original.padding_side
    assert tok("what is 17 plus 25?")["input_ids"] == original("what is 17 plus 25?")["input_ids"]


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_kernel_switch_keeps_the_logits_and_a_bad_kernel_is_one_sentence(arch, root):
    from rlhfkit.models.load import set_attention

    folder = saved_model_dir(arch, root)
    ids = torch.tensor([encode(arch)[0]])
    default = load_causal_lm(folder)
    eager = set_attention(load_causal_lm(folder), "eager")
    assert default.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    assert set_attention(default, None) is default and default.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.allclose(eager(ids).logits, default(ids).logits, atol=1e-5)
    for bad in ("no_such_kernel", "flash_attention_2"):  # unknown; needs a package and a GPU absent here
        with pytest.raises(ModelLoadError) as info:
            set_attention(load_causal_lm(folder), bad, key="model.attn_implementation")
        message = str(info.value)
        assert message.startswith(f"model.attn_implementation={bad!r} cannot be used: ")
        assert "\n" not in message and message.endswith("."), message
