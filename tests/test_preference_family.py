"""KTO, ORPO and SimPO in the preference trainer: the step against per-example forwards and the papers'
formulas, the mismatched KL rows, the config rules, no reference where none is needed, learning end to end."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.cli import main as cli
from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import encode_preference, load_rows
from rlhfkit.data.collate import pad_token_id_for
from rlhfkit.data.unpaired import encode_unpaired, load_unpaired_rows, unpaired_from_preferences
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.trainers.dpo import (
    DPOConfig,
    DPOStep,
    KTOObjective,
    NoReference,
    Pair,
    PreferenceCollator,
    PreferenceObjective,
)
from rlhfkit.trainers.preference_data import kto_examples, mismatched_partners
from rlhfkit.trainers.reference_cache import FrozenReference, PrecomputedReference, compute_reference_logps

try:
    from test_dpo_common import learnable_rows, model_dir, read_metrics, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import learnable_rows, model_dir, read_metrics, write_jsonl


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sequence_logp_alone(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """log π(response | prompt) from one forward on the unpadded sequence."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(len(prompt_ids), ids.shape[1]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    policy = load_causal_lm(model_dir(root, seed=0))
    reference = load_causal_lm(model_dir(root, seed=1))
    tok = load_tokenizer(model_dir(root, seed=0))
    rows = load_rows(write_jsonl(root / "p.jsonl", learnable_rows(6, seed=5)), "preference").rows
    return policy, reference, tok, rows


@pytest.mark.parametrize("name,options", [("orpo", {}), ("simpo", {"gamma": 0.4})])
def test_reference_free_step_equals_per_example_forwards_and_the_formula(setup, name, options):
    policy, _, tok, rows = setup
    examples, _ = encode_preference(tok, rows)
    beta = 0.3
    step = DPOStep(PreferenceObjective(name, beta, options), NoReference())
    for shared in (False, True):  # one row per response, or prompt + chosen + rejected in one row
        batch = PreferenceCollator(pad_token_id_for(tok), shared_prompt=shared)(
            [Pair(i, e) for i, e in enumerate(examples)])
        loss, metrics = step(policy, batch)
        expected = []
        for e in examples:
            pc, pr = (sequence_logp_alone(policy, e.prompt_ids, y) for y in (e.chosen_ids, e.rejected_ids))
            ac, ar = pc / len(e.chosen_ids), pr / len(e.rejected_ids)
            if name == "simpo":
                expected.append(-log_sigmoid(beta * ac - beta * ar - options["gamma"]))
            else:
                log_odds = (ac - math.log1p(-math.exp(ac))) - (ar - math.log1p(-math.exp(ar)))
                expected.append(-ac - beta * log_sigmoid(log_odds))
        assert float(loss.detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-4, abs=1e-5)
        assert "logps/chosen_minus_ref" not in metrics


def test_kto_step_equals_per_example_forwards_and_the_paper_formula(setup):
    policy, reference, tok, rows = setup
    unpaired = unpaired_from_preferences(rows)
    encoded, labels, _ = encode_unpaired(tok, unpaired)
    examples = kto_examples(encoded, labels, seed=3)
    pad = pad_token_id_for(tok)
    beta, lam_d, lam_u = 0.5, 1.0, 1.5
    objective = KTOObjective(beta, {"desirable_weight": lam_d, "undesirable_weight": lam_u})
    pairs = [Pair(i, e) for i, e in enumerate(examples)]

    # by hand: z₀ from the mismatched rows (clipped at 0), then each example's loss
    def r(model, e, ids):
        return sequence_logp_alone(model, e.prompt_ids, ids)

    kl = max(0.0, sum(r(policy, e, e.rejected_ids) - r(reference, e, e.rejected_ids) for e in examples) / 12)
    expected = []
    for e in examples:
        reward = r(policy, e, e.chosen_ids) - r(reference, e, e.chosen_ids)
        sigma = 1 / (1 + math.exp(-beta * ((reward - kl) if e.desirable else (kl - reward))))
        expected.append((lam_d if e.desirable else lam_u) * (1 - sigma))

    table = compute_reference_logps(reference, examples, pad_token_id=pad, batch_size=5)
    for step, collate in ((DPOStep(objective, FrozenReference(reference)), PreferenceCollator(pad)),
                          (DPOStep(objective, PrecomputedReference(table)), PreferenceCollator(pad, table, True))):
        loss, metrics = step(policy, collate(pairs))
        assert float(loss.detach()) == pytest.approx(sum(expected) / 12, rel=1e-4, abs=1e-5)
        assert float(metrics["kto/kl"]) == pytest.approx(kl, abs=1e-4)
        assert float(metrics["kto/desirable_fraction"]) == 0.5


def test_mismatched_partners_never_share_a_prompt_and_depend_only_on_the_seed():
    prompts = [[1], [1], [2], [2], [3], [3], [4]]  # pairs unpaired: a prompt's two rows side by side
    partners = mismatched_partners(prompts, seed=7)
    assert all(prompts[j] != prompts[i] for i, j in enumerate(partners))
    assert partners == mismatched_partners(prompts, seed=7) != mismatched_partners(prompts, seed=8)
    assert mismatched_partners([[5], [5]], seed=0) == [1, 0]  # one prompt only: the other row all the same


# ----------------------------------------------------------------------------- config


def _config(*overrides):
    return load_config(DPOConfig, None, ["model.path=m", "data.train_file=t.jsonl", *overrides])


@pytest.mark.parametrize("overrides,key", [
    (["loss=dpo", "simpo_gamma=0.5"], "simpo_gamma"),
    (["loss=dpo", "kto_desirable_weight=1.2"], "kto_desirable_weight"),
    (["loss=kto", "kto_undesirable_weight=-1"], "kto_undesirable_weight"),
    (["loss=dpo", "data_kind=unpaired"], "data_kind"),
    (["loss=kto", "data_kind=ranking"], "data_kind"),
    (["loss=orpo", "reference=other"], "reference"),
])
def test_cross_field_rules_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        _config(*overrides)


def test_loss_options_and_reference_need():
    assert _config("loss=simpo").loss_options() == {"gamma": 0.5}
    assert _config("loss=kto", "kto_desirable_weight=1.3").loss_options() == {
        "desirable_weight": 1.3, "undesirable_weight": 1.0}
    assert [_config(f"loss={n}").needs_reference for n in ("dpo", "kto", "orpo", "simpo")] == [
        True, True, False, False]


def test_the_family_recipes_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(DPOConfig, configs / "kto.yaml").data_kind == "unpaired"
    assert load_config(DPOConfig, configs / "orpo.yaml").loss == "orpo"
    assert load_config(DPOConfig, configs / "simpo.yaml").loss_options() == {"gamma": 1.0}


# ----------------------------------------------------------------------------- end to end


def _args(root, command, out, *extra):
    return [command, f"model.path={model_dir(root)}", f"train.output_dir={root / out}", "train.progress_bar=false",
            "train.per_device_batch_size=8", "train.lr=3e-3", "data.max_length=64", "data.max_prompt_length=32",
            *extra]


def mean_logps(model, tok, rows) -> tuple[float, float]:
    """Mean summed log-prob of the good and of the bad completions (independent forwards)."""
    encoded, labels, _ = encode_unpaired(tok, rows, max_length=64, max_prompt_length=32)
    sums, counts = [0.0, 0.0], [0, 0]
    for e, good in zip(encoded, labels, strict=True):
        sums[0 if good else 1] += sequence_logp_alone(model, e.prompt_ids, e.response_ids)
        counts[0 if good else 1] += 1
    return sums[0] / counts[0], sums[1] / counts[1]


@pytest.mark.parametrize("swap", [False, True], ids=["word-good", "word-bad"])
def test_kto_on_unpaired_rows_learns_the_labels(tmp_path, swap):
    """`rlhfkit kto` on thumbs: the good completions gain log-probability against the bad ones on held-out rows
    (swapped labels: the opposite — it is the label that is learned, not the words)."""
    def unpaired(n, seed):
        rows = [{"prompt": r["prompt"], "completion": r[key], "label": key == ("rejected" if swap else "chosen")}
                for r in learnable_rows(n, seed) for key in ("chosen", "rejected")]
        return rows[::2] + rows[3::4]  # unbalanced: all of one kind's rows, half of the other's, no pairs kept

    write_jsonl(tmp_path / "train.jsonl", unpaired(96, 1))
    eval_rows = load_unpaired_rows(write_jsonl(tmp_path / "eval.jsonl", unpaired(32, 2))).rows
    tok, start = load_tokenizer(model_dir(tmp_path)), load_causal_lm(model_dir(tmp_path))
    good_0, bad_0 = mean_logps(start, tok, eval_rows)
    args = _args(tmp_path, "kto", "kto", "data_kind=unpaired", f"data.train_file={tmp_path / 'train.jsonl'}",
                 f"data.eval_file={tmp_path / 'eval.jsonl'}", "train.num_epochs=4", "beta=0.5")
    assert cli(args) == 0
    good_1, bad_1 = mean_logps(load_causal_lm(tmp_path / "kto" / "final"), tok, eval_rows)
    assert (good_1 - bad_1) - (good_0 - bad_0) > 1.0
    rows = read_metrics(tmp_path / "kto")
    assert "eval/rewards/chosen" in rows[-1] and "eval/kto/kl" in rows[-1]
    kls = [r["kto/kl"] for r in rows if "kto/kl" in r]
    assert kls and all(k >= 0 for k in kls)


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_load_no_reference_and_learn(tmp_path, monkeypatch, loss):
    import rlhfkit.trainers.dpo as dpo

    def no(*args, **kwargs):
        raise AssertionError("a reference-free loss must not compute or load a reference")

    monkeypatch.setattr(dpo, "FrozenReference", no)
    monkeypatch.setattr(dpo, "_precompute", no)
    monkeypatch.setattr(dpo, "weights_fingerprint", no)
    write_jsonl(tmp_path / "train.jsonl", learnable_rows(96, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", learnable_rows(32, seed=2))
    extra = ["simpo_gamma=0.2", "beta=2.0"] if loss == "simpo" else ["beta=0.5"]
    for mode in ("precompute", "on_the_fly"):
        args = _args(tmp_path, "dpo", f"{loss}-{mode}", f"loss={loss}", f"reference_mode={mode}",
                     f"data.train_file={tmp_path / 'train.jsonl'}", f"data.eval_file={tmp_path / 'eval.jsonl'}",
                     "train.num_epochs=4" if mode == "precompute" else "train.max_steps=1", *extra)
        assert cli(args) == 0
    evals = [r for r in read_metrics(tmp_path / f"{loss}-precompute") if "eval/rewards/accuracies" in r]
    assert evals[-1]["eval/rewards/accuracies"] >= 0.8
