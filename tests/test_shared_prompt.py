"""Shared-prompt rows (one prompt, several responses, one row), length-grouped steps, the SFT step's kept logits.

Every value is checked against an independent computation: each response in a row of its own.
"""

from __future__ import annotations

import random

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.collate import LengthGroupedDataset, collate_sft, collate_shared_prompt
from rlhfkit.data.encode import EncodedGroup, EncodedPreference, EncodedSFT
from rlhfkit.models.forward import (
    shared_prompt_attention_mask,
    shared_prompt_logprobs,
    shared_prompt_matches_separate_rows,
)
from rlhfkit.models.heads import score_sequences
from rlhfkit.trainers.dpo import DPOStep, Pair, PreferenceCollator, PreferenceObjective
from rlhfkit.trainers.pretrain import causal_lm_step
from rlhfkit.trainers.reference_cache import FrozenReference, PrecomputedReference, ReferenceLogps
from rlhfkit.trainers.reward import RewardConfig, collate_comparisons, group_scores, reward_step
from rlhfkit.trainers.sft import SFTConfig, sft_step

try:
    from test_models_common import arch_model, model_for  # noqa: F401 (fixture)
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import arch_model, model_for  # noqa: F401 (fixture)




def random_groups(vocab: int, seed: int, n: int = 3, most: int = 3):
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(5, vocab) for _ in range(rng.randint(low, high))]

    return [(ids(1, 6), [ids(1, 5) for _ in range(rng.randint(1, most))]) for _ in range(n)]


def logp_alone(model, prompt: list[int], response: list[int]) -> float:
    """log π(response | prompt) from one unpadded forward: Σ_t log softmax(logits_{t−1})[x_t], in float64."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1]))


# ----------------------------------------------------------------------------- the layout


def test_collate_shared_prompt_hand_worked():
    batch = collate_shared_prompt([[7, 8], [9]], [[[1, 2], [3]], [[4, 5, 6]]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 1, 2, 3], [9, 4, 5, 6, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["segment_ids"].tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 3, 0]]  # each response follows its prompt
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]]
    assert batch["response_row"].tolist() == [0, 0, 1]
    assert batch["response_start"].tolist() == [2, 4, 1] and batch["response_end"].tolist() == [4, 5, 4]
    assert batch["prompt_length"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="row 0"):
        collate_shared_prompt([[7]], [[[1], []]], pad_token_id=0)


def test_attention_mask_hand_worked():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = shared_prompt_attention_mask(segments)[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],   # prompt: causal
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],   # response 1: the prompt and itself
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 0, 0, 1, 0],   # response 2: the prompt and itself, never response 1
                       [0, 0, 0, 0, 0, 1]]   # padding: itself only (no NaN), and no one attends to it
    additive = shared_prompt_attention_mask(segments, torch.float32)[0, 0]
    assert torch.equal(additive == 0, torch.tensor(allowed, dtype=torch.bool))
    assert float(additive.min()) == torch.finfo(torch.float32).min


# ----------------------------------------------------------------------------- against separate rows


def test_logprobs_equal_each_response_alone(arch_model):
    arch, model = arch_model
    groups = random_groups(model.get_input_embeddings().weight.shape[0], seed=1)
    batch = collate_shared_prompt([p for p, _ in groups], [rs for _, rs in groups], pad_token_id=0)
    with torch.no_grad():
        logps, lengths = shared_prompt_logprobs(model, batch)
    expected = [logp_alone(model, p, r) for p, rs in groups for r in rs]
    assert logps.tolist() == pytest.approx(expected, abs=2e-4)
    assert lengths.tolist() == [len(r) for _, rs in groups for r in rs]
    assert shared_prompt_matches_separate_rows(model)


def test_eager_attention_gets_an_additive_mask_with_the_same_result():
    model = model_for("llama")
    groups = random_groups(model.get_input_embeddings().weight.shape[0], seed=2)
    batch = collate_shared_prompt([p for p, _ in groups], [rs for _, rs in groups], pad_token_id=0)
    expected = [logp_alone(model, p, r) for p, rs in groups for r in rs]
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            logps, _ = shared_prompt_logprobs(model, batch)
    finally:
        model.config._attn_implementation = "sdpa"
    assert logps.tolist() == pytest.approx(expected, abs=2e-4)


def test_the_live_check_fails_a_model_that_ignores_the_mask(monkeypatch):
    """An attention that drops the 4-D mask (plain causal over the row) lets response 2 see response 1."""
    import rlhfkit.models.forward as forward

    model = model_for("llama")
    real = forward.shared_prompt_inputs

    def without_mask(m, batch):
        inputs = real(m, batch)
        inputs["attention_mask"] = None
        return inputs

    monkeypatch.setattr(forward, "shared_prompt_inputs", without_mask)
    assert not shared_prompt_matches_separate_rows(model)


def test_gradients_equal_those_of_separate_rows():
    """Backward through the shared row: the gradient of Σ logps equals the sum over one forward per response."""
    shared, separate = model_for("llama", seed=3).train(), model_for("llama", seed=3).train()
    groups = random_groups(shared.get_input_embeddings().weight.shape[0], seed=4)
    batch = collate_shared_prompt([p for p, _ in groups], [rs for _, rs in groups], pad_token_id=0)
    shared_prompt_logprobs(shared, batch)[0].sum().backward()
    for p, rs in groups:
        for r in rs:
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(separate(input_ids=ids).logits[0], dim=-1)
            sum(logp[t - 1, ids[0, t]] for t in range(len(p), ids.shape[1])).backward()
    for (name, a), b in zip(shared.named_parameters(), separate.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_dpo_step_with_shared_rows_equals_two_rows_per_pair():
    policy, reference = model_for("llama", seed=0), model_for("llama", seed=1)
    vocab = policy.get_input_embeddings().weight.shape[0]
    rng = random.Random(5)
    examples = [EncodedPreference(*([rng.randrange(5, vocab) for _ in range(rng.randint(1, n))] for n in (6, 5, 5)))
                for _ in range(4)]
    with torch.no_grad():
        chosen = torch.tensor([logp_alone(reference, e.prompt_ids, e.chosen_ids) for e in examples])
        rejected = torch.tensor([logp_alone(reference, e.prompt_ids, e.rejected_ids) for e in examples])
    table = ReferenceLogps(chosen.float(), rejected.float())
    objective = PreferenceObjective("ipo", 0.2)  # IPO also reads the lengths, so they are checked too
    pairs = [Pair(i, e) for i, e in enumerate(examples)][::-1]
    shared_batch = PreferenceCollator(0, table, shared_prompt=True)(pairs)
    assert shared_batch["input_ids"].shape[0] == 4  # one row per pair
    with torch.no_grad():
        loss, metrics = DPOStep(objective, PrecomputedReference(table))(policy, shared_batch)
        rows_loss, rows_metrics = DPOStep(objective, FrozenReference(reference))(policy, PreferenceCollator(0)(pairs))
    assert float(loss) == pytest.approx(float(rows_loss), abs=1e-4)
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected_minus_ref"):
        assert float(metrics[name]) == pytest.approx(float(rows_metrics[name]), abs=1e-4), name
    assert abs(float(metrics["rewards/margins"])) > 1e-3  # two different models: not 0 == 0
    with pytest.raises(ValueError, match="precomputed"):
        DPOStep(objective, FrozenReference(reference))(policy, shared_batch)


def test_reward_scores_and_loss_with_shared_rows_equal_one_row_per_response():
    from transformers import AutoModelForSequenceClassification

    config = model_for("qwen2").config
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    groups = [EncodedGroup(p, rs, [(i, j) for i in range(len(rs)) for j in range(len(rs)) if i < j])
              for p, rs in random_groups(config.vocab_size, seed=6, n=4, most=4)]
    groups = [g for g in groups if g.pairs] or pytest.skip("no group with two responses")
    shared_batch, rows_batch = (collate_comparisons(groups, 0, shared) for shared in (True, False))
    with torch.no_grad():
        scores = group_scores(model, shared_batch)
        alone = [float(score_sequences(model, torch.tensor([g.prompt_ids + r]),
                                       torch.ones(1, len(g.prompt_ids) + len(r), dtype=torch.long)))
                 for g in groups for r in g.response_ids]
        loss, _ = reward_step(model, shared_batch, 0.3, "prompt")
        rows_loss, _ = reward_step(model, rows_batch, 0.3, "prompt")
    assert scores.tolist() == pytest.approx(alone, abs=1e-4)
    assert float(loss) == pytest.approx(float(rows_loss), abs=1e-5)
    for key in ("chosen_index", "rejected_index", "pair_group"):
        assert torch.equal(shared_batch[key], rows_batch[key]), key


# ----------------------------------------------------------------------------- SFT step, length grouping


def test_sft_step_with_kept_logits_equals_the_full_causal_lm_step():
    model = model_for("gpt2")
    vocab = model.get_input_embeddings().weight.shape[0]
    rng = random.Random(7)
    examples = [EncodedSFT([rng.randrange(5, vocab) for _ in range(rng.randint(2, 9))],
                           [rng.randrange(5, vocab) for _ in range(rng.randint(1, 6))]) for _ in range(5)]
    batch = collate_sft(examples, pad_token_id=0)
    with torch.no_grad():
        loss, _ = sft_step(model, batch)
        full, _ = causal_lm_step(model, batch)
        by_hand = -sum(logp_alone(model, e.prompt_ids, e.response_ids) for e in examples)
    assert float(loss) == pytest.approx(float(full), abs=1e-5)
    assert float(loss) == pytest.approx(by_hand / sum(len(e.response_ids) for e in examples), abs=1e-4)


def test_length_grouped_dataset_sorts_by_the_given_lengths():
    class Loop:
        epoch = 0

    examples = list(range(40))
    lengths = [(7 * i) % 41 for i in examples]  # a known permutation of lengths
    view = LengthGroupedDataset(examples, global_batch_size=10, seed=1, lengths=lengths)
    view.loop = Loop()
    order = view.grouped_order(0)
    batches = [order[k : k + 10] for k in range(0, 40, 10)]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(high < next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))  # disjoint length bands
    assert max(lengths) in [lengths[i] for i in batches[0]]  # the longest batch first: an OOM shows at step 1
    assert sorted(view[i] for i in range(40)) == examples
    with pytest.raises(ValueError, match="3 lengths"):
        LengthGroupedDataset(examples, 10, 1, lengths=[1, 2, 3])


@pytest.mark.parametrize("cls", [SFTConfig, RewardConfig])
def test_group_by_length_needs_shuffle(cls):
    with pytest.raises(ConfigError, match="group_by_length"):
        load_config(cls, None, ["model.path=m", "data.train_file=t", "group_by_length=true", "train.shuffle=false"])


def test_sft_group_by_length_through_the_cli_puts_the_longest_examples_in_step_one(tmp_path):
    """8 rows, 4 short and 4 long, 4 per step: with ``group_by_length`` step 1 holds exactly the 4 longest, so its
    logged loss is their token-mean NLL computed independently on the untrained model."""
    from rlhfkit.data import encode_sft, load_rows
    from rlhfkit.models.load import load_causal_lm

    try:
        from stage_helpers import FAST_TRAIN, cli, model_dir, read_metrics, tokenizer, write_jsonl
    except ImportError:  # tests/ imported as a package
        from tests.stage_helpers import FAST_TRAIN, cli, model_dir, read_metrics, tokenizer, write_jsonl

    base = model_dir(tmp_path)
    words = ["red", "blue", "cat", "dog", "tree", "sun", "moon", "lake"]
    rows = [{"prompt": f"what is the {w}?", "response": " ".join(words[: 2 + (i % 2) * 5 + i // 2 % 2])}
            for i, w in enumerate(words)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "grouped"
    assert cli(["sft", f"model.path={base}", f"data.train_file={data}", f"train.output_dir={out}",
                "data.max_length=48", "data.max_prompt_length=24", *FAST_TRAIN, "group_by_length=true",
                "train.per_device_batch_size=4", "train.max_steps=1", "train.lr=1e-3"]) == 0
    examples, _ = encode_sft(tokenizer(), load_rows(data, "sft").rows, max_length=48, max_prompt_length=24)
    longest = sorted(examples, key=len)[4:]
    assert len(longest[0]) > len(sorted(examples, key=len)[3])  # the two halves are told apart by length
    model = load_causal_lm(base)
    total = count = 0.0
    with torch.no_grad():
        for e in longest:
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), dim=-1)
            total -= sum(float(logp[t - 1, e.input_ids[t]]) for t in range(len(e.prompt_ids), len(e.input_ids)))
            count += len(e.response_ids)
    assert read_metrics(out)[0]["train/loss"] == pytest.approx(total / count, rel=1e-5)
