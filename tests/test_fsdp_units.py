"""The pieces of ``rlhfkit/engine/fsdp.py`` in this process (fast; the multi-process runs are test_fsdp*.py):
what asks for FSDP2, the sharded gradient clip against torch's, the meta skeleton, and a one-process FSDP2
round trip (shard → gathered model / sharded checkpoint) over a gloo group of size 1."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.engine import fsdp, sharded_checkpoint


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


@pytest.fixture
def group_of_one():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp2_is_asked_for_by_accelerates_variables(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not fsdp.requested()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp.requested()
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        fsdp.requested()


def test_layer_classes_come_from_the_model_or_the_config(monkeypatch):
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    assert fsdp.layer_classes(tiny_llama()) == {"LlamaDecoderLayer"}
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaMLP, LlamaAttention")
    assert fsdp.layer_classes(tiny_llama()) == {"LlamaMLP", "LlamaAttention"}


def test_clip_matches_torch_on_whole_gradients():
    a, b = (torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2))
    for p in (a, b):
        p.grad = torch.randn_like(p) * 10
    reference = [p.grad.clone() for p in (a, b)]
    twins = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for twin, g in zip(twins, reference):
        twin.grad = g.clone()
    expected = float(torch.nn.utils.clip_grad_norm_(twins, 1.0))  # torch's, on whole gradients
    norm = fsdp.clip_grad_norm_([a, b], 1.0)
    assert norm == pytest.approx(expected, rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.cat([a.grad.flatten(), b.grad.flatten()]))
    assert float(clipped) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(a.grad, twins[0].grad) and torch.allclose(b.grad, twins[1].grad)


def test_meta_skeleton_costs_no_memory_and_keeps_ties_and_buffers():
    model = tiny_llama()
    skeleton = fsdp.meta_skeleton(model)
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight  # tied stays tied
    assert all(b.device.type == "cpu" for b in skeleton.buffers())  # rotary inv_freq: not in the state dict
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model is untouched


def test_one_process_shard_gather_and_checkpoint_round_trip(group_of_one, tmp_path):
    model, plain = tiny_llama(), tiny_llama()
    skeleton = fsdp.meta_skeleton(model)
    fsdp.shard(model, torch.device("cpu"), 1)
    assert fsdp.is_sharded(model) and all(type(p.data).__name__ == "DTensor" for p in model.parameters())
    ids = torch.randint(0, 50, (2, 7))
    assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    sharded_checkpoint.save(model, optimizer, tmp_path)
    trained = {k: v.clone() for k, v in fsdp.full_state_dict(model).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    sharded_checkpoint.load(model, optimizer, tmp_path, with_optimizer=True)
    restored = fsdp.full_state_dict(model)
    assert all(torch.equal(trained[k], restored[k]) for k in trained)
    gathered = fsdp.gathered_model(model, skeleton)
    assert not fsdp.is_sharded(gathered) and gathered.lm_head.weight is gathered.model.embed_tokens.weight
    assert torch.allclose(gathered(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
