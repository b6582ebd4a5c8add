"""Pretraining on packed documents: the cut of the token stream, attention confined to documents, a run on
the shared loop that saves a plain transformers folder."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.ops import IGNORE_INDEX
from rlhfkit.trainers.pretrain import PackedBlocks, check_packed_attention, pretrain, tokenize_documents

try:
    from stage_helpers import TOKENIZER_TEXTS, model_dir, read_metrics, tokenizer
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import TOKENIZER_TEXTS, model_dir, read_metrics, tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # before the module's other fixtures, which train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DOCS = [[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 14, 2], [15, 2]]  # 2 plays EOS


@pytest.mark.parametrize("block_size", [3, 4, 5, 16])
def test_blocks_cut_the_stream_and_restart_at_documents(block_size):
    blocks = PackedBlocks(DOCS, block_size, separate_documents=True, pad_token_id=0)
    stream = [(t, i == 0) for doc in DOCS for i, t in enumerate(doc)]  # (token, starts a document)
    expected_ids, expected_labels, expected_positions, segment_start = [], [], [], 0
    for k, (token, doc_start) in enumerate(stream):  # the independent, token-by-token version
        col = k % block_size
        if col == 0 or doc_start:
            segment_start = k
        expected_ids.append(token)
        expected_labels.append(IGNORE_INDEX if col == 0 or doc_start else token)
        expected_positions.append(k - segment_start)
    n = len(stream)
    assert blocks.input_ids.flatten()[:n].tolist() == expected_ids
    assert blocks.labels.flatten()[:n].tolist() == expected_labels
    assert blocks.position_ids.flatten()[:n].tolist() == expected_positions
    assert (blocks.labels.flatten()[n:] == IGNORE_INDEX).all()  # padding of the last row
    assert len(blocks) == -(-n // block_size)


def test_gpt2_style_rows_keep_one_causal_stream():
    blocks = PackedBlocks(DOCS, 5, separate_documents=False, pad_token_id=0)
    stream = [t for doc in DOCS for t in doc]
    assert blocks.position_ids[0].tolist() == [0, 1, 2, 3, 4]
    assert blocks.labels.flatten()[: len(stream)].tolist() == stream  # every token is a target
    assert (blocks.labels.flatten()[len(stream):] == IGNORE_INDEX).all()


def test_a_document_in_a_packed_row_sees_nothing_before_it(tmp_path):
    from rlhfkit.models.load import load_causal_lm

    model = load_causal_lm(model_dir(tmp_path))
    docs = tokenize_documents(tokenizer(), ["the cat is red.", "what is the colour of the moon?"])
    row = PackedBlocks(docs, sum(map(len, docs)), separate_documents=True)[0]
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"][None], position_ids=row["position_ids"][None],
                       use_cache=False).logits[0]  # a KV cache would switch the packed-sequence mask off
        alone = model(input_ids=torch.tensor([docs[1]])).logits[0]
        crossing = model(input_ids=row["input_ids"][None]).logits[0]  # no restart: attention crosses
    assert torch.allclose(packed[len(docs[0]):], alone, atol=1e-5)
    assert not torch.allclose(crossing[len(docs[0]):], alone, atol=1e-3)


class IgnoresPositions(torch.nn.Module):
    """A model whose attention spans the whole row whatever the position ids say."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, use_cache=None):
        return self.model(input_ids=input_ids, use_cache=False)


def test_packing_is_refused_for_a_model_whose_attention_crosses_sequences(tmp_path):
    from rlhfkit.models.load import load_causal_lm

    model = load_causal_lm(model_dir(tmp_path))
    check_packed_attention(model)  # the real thing passes
    with pytest.raises(ConfigError, match="does not confine attention"):
        check_packed_attention(IgnoresPositions(model))


def test_pretrain_learns_and_saves_a_folder_plain_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.tiny import build_tiny_model

    texts = TOKENIZER_TEXTS[:60]
    config = TrainConfig(output_dir=str(tmp_path / "pre"), lr=1e-2, max_steps=25, per_device_batch_size=8,
                         progress_bar=False, save_every=0, lr_schedule="constant")
    model = pretrain(texts, tokenizer(), build_tiny_model("llama", "micro", tokenizer()), config,
                     block_size=32, eval_texts=texts[:10])
    rows = read_metrics(tmp_path / "pre")
    assert len(rows) == 25 and rows[-1]["train/loss"] < 0.6 * rows[0]["train/loss"]
    assert "eval/pretrain/nll" in rows[-1]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pre" / "final").eval()
    ids = torch.tensor([tokenizer()(texts[3])["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
    assert (tmp_path / "pre" / "final" / "tokenizer.json").exists()
    # the same call again finds the finished run: nothing trained, the same weights returned
    again = pretrain(texts, tokenizer(), build_tiny_model("llama", "micro", tokenizer()), config,
                     block_size=32, eval_texts=texts[:10])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-6)


def test_block_size_beyond_the_model_positions_is_refused(tmp_path):
    from rlhfkit.models.tiny import build_tiny_model

    config = TrainConfig(output_dir=str(tmp_path / "x"), progress_bar=False)
    with pytest.raises(ConfigError, match="block_size=1024"):
        pretrain(["a b c"], tokenizer(), build_tiny_model("llama", "micro", tokenizer()), config, block_size=1024)
    assert not (tmp_path / "x").exists()
