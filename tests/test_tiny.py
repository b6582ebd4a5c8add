"""The tiny model/tokenizer factory: round-trips, special-token conventions, all architectures."""

import pytest
import torch

from rlhfkit.models.tiny import ARCHS, TOKENIZER_STYLES, build_tiny_model, save_tiny, train_tokenizer

TEXTS = [
    "what is 17 plus 25? the answer is 42.",
    "how do I kill a python process? use the kill command.",
    "I don't know. Nobody can know the future.",
] * 30


@pytest.fixture(scope="module", params=TOKENIZER_STYLES)
def tokenizer(request):
    return train_tokenizer(TEXTS, vocab_size=300, style=request.param)


def test_round_trip_is_exact(tokenizer):
    for text in ["what is 17 plus 25?", "  odd   spacing\nand a newline", "unseen wörds ünïcode"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_special_token_conventions():
    llama = train_tokenizer(TEXTS, 300, "llama")
    gpt2 = train_tokenizer(TEXTS, 300, "gpt2")
    qwen = train_tokenizer(TEXTS, 300, "qwen2")
    # llama adds BOS itself and its template also emits one: the double-BOS trap the data layer must handle
    assert llama("hi")["input_ids"][0] == llama.bos_token_id
    assert llama.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<s>")
    assert llama.pad_token is None and gpt2.pad_token is None
    assert gpt2.chat_template is None and gpt2.bos_token == gpt2.eos_token
    assert qwen.pad_token == "<|endoftext|>" and qwen.eos_token == "<|im_end|>" and qwen.bos_token is None
    assert qwen("hi")["input_ids"][0] != qwen.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize("arch", ARCHS)
def test_models_build_save_and_reload_with_plain_transformers(arch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_tokenizer(TEXTS, 300, "world")
    model = build_tiny_model(arch, "micro", tok, seed=1)
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok("what is 17 plus 25?")["input_ids"]])
    save_tiny(model, tok, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_same_seed_same_weights_different_seed_differs():
    tok = train_tokenizer(TEXTS, 300, "world")
    a, b, c = (build_tiny_model("llama", "micro", tok, seed=s) for s in (3, 3, 4))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
