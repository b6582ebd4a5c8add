"""The DPO step against an independent computation, the config's cross-field rules, the length grouping."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import encode_preference, load_rows
from rlhfkit.data.collate import pad_token_id_for
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.trainers.dpo import (
    DPOConfig,
    DPOStep,
    LengthGroupedPairs,
    Pair,
    PreferenceCollator,
    PreferenceObjective,
)
from rlhfkit.trainers.reference_cache import FrozenReference, compute_reference_logps

try:
    from test_dpo_common import learnable_rows, model_dir, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import learnable_rows, model_dir, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Policy (seed 0) and a *different* reference (seed 1), so rewards are not zero; 6 encoded pairs."""
    root = tmp_path_factory.mktemp("dpo_loss")
    policy = load_causal_lm(model_dir(root, seed=0))
    reference = load_causal_lm(model_dir(root, seed=1))
    tok = load_tokenizer(model_dir(root, seed=0))
    rows = load_rows(write_jsonl(root / "p.jsonl", learnable_rows(6, seed=5)), "preference").rows
    examples, _ = encode_preference(tok, rows)
    return policy, reference, tok, examples


def sequence_logp_alone(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """log π(response | prompt) from one forward on the unpadded sequence: Σ_t log softmax(logits_{t−1})[x_t]."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(len(prompt_ids), ids.shape[1]))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def loss_by_hand(name: str, beta: float, pc, pr, rc, rr, nc, nr, options) -> float:
    """The paper formulas on Python floats, one pair."""
    h = (pc - rc) - (pr - rr)
    if name == "dpo":
        return -log_sigmoid(beta * h)
    if name == "cdpo":
        eps = options["label_smoothing"]
        return -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
    if name == "ipo":  # per-token average log-probs, (h − 1/(2τ))²
        h_avg = (pc - rc) / nc - (pr - rr) / nr
        return (h_avg - 1 / (2 * beta)) ** 2
    if name == "rpo":
        return -log_sigmoid(beta * h) + options["alpha"] * (-pc / nc)
    raise AssertionError(name)


@pytest.mark.parametrize("name,options", [("dpo", {}), ("ipo", {}), ("cdpo", {"label_smoothing": 0.2}),
                                          ("rpo", {"alpha": 0.7})])
def test_step_loss_equals_per_example_forwards_and_the_formula(setup, name, options):
    policy, reference, tok, examples = setup
    beta = 0.3
    step = DPOStep(PreferenceObjective(name, beta, options), FrozenReference(reference))
    batch = PreferenceCollator(pad_token_id_for(tok))([Pair(i, e) for i, e in enumerate(examples)])
    loss, metrics = step(policy, batch)

    expected, rewards_chosen, displacement = [], [], []
    for e in examples:
        pc, pr = (sequence_logp_alone(policy, e.prompt_ids, y) for y in (e.chosen_ids, e.rejected_ids))
        rc, rr = (sequence_logp_alone(reference, e.prompt_ids, y) for y in (e.chosen_ids, e.rejected_ids))
        nc, nr = len(e.chosen_ids), len(e.rejected_ids)
        expected.append(loss_by_hand(name, beta, pc, pr, rc, rr, nc, nr, options))
        rewards_chosen.append(beta * ((pc - rc) / len(e.chosen_ids) if name == "ipo" else pc - rc))
        displacement.append(pc - rc)
    mean = sum(expected) / len(expected)
    assert float(loss.detach()) == pytest.approx(mean, rel=1e-4, abs=1e-5)
    assert float(metrics["rewards/chosen"]) == pytest.approx(sum(rewards_chosen) / 6, rel=1e-4, abs=1e-5)
    assert float(metrics["logps/chosen_minus_ref"]) == pytest.approx(sum(displacement) / 6, rel=1e-4, abs=1e-4)
    assert abs(sum(displacement)) > 1e-2  # two different models: the check above is not 0 == 0


def test_the_loss_has_a_gradient_only_through_the_policy(setup):
    policy, reference, tok, examples = setup
    step = DPOStep(PreferenceObjective("dpo", 0.1), FrozenReference(reference))
    loss, _ = step(policy, PreferenceCollator(pad_token_id_for(tok))([Pair(i, e) for i, e in enumerate(examples)]))
    loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    policy.zero_grad(set_to_none=True)


def test_precomputed_table_equals_per_example_forwards_in_any_batch_size(setup):
    _, reference, tok, examples = setup
    pad = pad_token_id_for(tok)
    table = compute_reference_logps(reference, examples, pad_token_id=pad, batch_size=4)
    other = compute_reference_logps(reference, examples, pad_token_id=pad, batch_size=1)
    for i, e in enumerate(examples):
        chosen, rejected = (sequence_logp_alone(reference, e.prompt_ids, y) for y in (e.chosen_ids, e.rejected_ids))
        assert float(table.chosen[i]) == pytest.approx(chosen, abs=1e-4)
        assert float(table.rejected[i]) == pytest.approx(rejected, abs=1e-4)
    torch.testing.assert_close(table.chosen, other.chosen, atol=1e-5, rtol=0)
    # the collator puts the table's values in the batch's row order: chosen rows, then rejected rows
    batch = PreferenceCollator(pad, table)([Pair(3, examples[3]), Pair(0, examples[0])])
    assert batch["ref_logps"].tolist() == [table.chosen[3].item(), table.chosen[0].item(),
                                           table.rejected[3].item(), table.rejected[0].item()]


# ----------------------------------------------------------------------------- config rules


def _config(tmp_path, *overrides):
    return load_config(DPOConfig, None, ["model.path=m", "data.train_file=t.jsonl", *overrides])


@pytest.mark.parametrize("overrides,key", [
    (["loss=dpo", "label_smoothing=0.1"], "label_smoothing"),
    (["loss=cdpo", "label_smoothing=0.5"], "label_smoothing"),
    (["loss=ipo", "rpo_alpha=1.0"], "rpo_alpha"),
    (["beta=0"], "beta"),
    (["group_by_length=true", "train.shuffle=false"], "group_by_length"),
    (["reference_batch_size=0"], "reference_batch_size"),
    (["lora.save_merged=false"], "lora.save_merged"),
])
def test_cross_field_rules_name_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        _config(tmp_path, *overrides)


def test_unknown_loss_lists_the_valid_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, "loss=slic")
    assert "slic" in str(info.value) and all(n in str(info.value) for n in ("cdpo", "dpo", "ipo", "kto", "orpo",
                                                                          "rpo", "simpo"))


def test_loss_options_fill_defaults_for_the_chosen_loss_only(tmp_path):
    assert _config(tmp_path, "loss=cdpo").loss_options() == {"label_smoothing": 0.1}
    assert _config(tmp_path, "loss=cdpo", "label_smoothing=0.25").loss_options() == {"label_smoothing": 0.25}
    assert _config(tmp_path, "loss=rpo").loss_options() == {"alpha": 1.0}
    assert _config(tmp_path, "loss=ipo").loss_options() == {}


# ----------------------------------------------------------------------------- length grouping


class _FakeLoop:
    epoch = 0


def _pairs(lengths):
    class Example:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    return [Pair(i, Example(n)) for i, n in enumerate(lengths)]


def test_length_grouped_pairs_fill_each_step_with_similar_lengths_and_visit_every_pair_once():
    from rlhfkit.data.order import DataOrder

    lengths = [int(x) for x in torch.randint(5, 200, (203,), generator=torch.Generator().manual_seed(0))]
    view = LengthGroupedPairs(_pairs(lengths), global_batch_size=16, seed=3, mega_batch_factor=4)
    view.loop = _FakeLoop()
    order = DataOrder(len(lengths), 16, seed=3)

    def steps(epoch):
        view.loop.epoch, out, position = epoch, [], 0
        for _ in range(order.steps_per_epoch):
            out.append([view[i].position for i in order.step_indices(epoch, position)])
            position = order.advance(epoch, position, len(out[-1]))[1]
        return out

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    epoch0, epoch1 = steps(0), steps(1)
    assert sorted(i for b in epoch0 for i in b) == list(range(len(lengths)))
    assert [len(b) for b in epoch0] == [16] * 12 + [11]  # the short step is the epoch's last
    assert epoch0 != epoch1 and steps(0) == epoch0  # new order per epoch, the same order when replayed
    random_batches = [order.step_indices(0, p) for p in range(0, len(lengths), 16)]
    assert padding(epoch0) < 0.5 * padding(random_batches)


# ----------------------------------------------------------------------------- recipes


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def test_the_recipes_load_and_the_lora_sibling_differs_in_a_few_keys():
    from pathlib import Path

    from rlhfkit.config import to_dict

    configs = Path(__file__).resolve().parents[1] / "configs"
    full = _flat(to_dict(load_config(DPOConfig, configs / "dpo.yaml")))
    lora = _flat(to_dict(load_config(DPOConfig, configs / "dpo_lora.yaml")))
    differing = {k for k in full if full[k] != lora[k]}
    assert differing and all(k.startswith("lora.") or k in ("train.output_dir", "train.lr") for k in differing)
    assert full["loss"] == "rpo" and full["lora.enabled"] is False
    # rpo_alpha stays null in the recipe (so loss=dpo/ipo/cdpo overrides are accepted); under rpo it is 1.0
    assert load_config(DPOConfig, configs / "dpo.yaml").loss_options() == {"alpha": 1.0}
    assert lora["lora.enabled"] is True
