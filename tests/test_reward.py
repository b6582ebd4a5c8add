"""Reward model through the real CLI on micro models: a learnable rule, InstructGPT grouping of rankings,
pair weighting and margin against hand computation, normalisation, plain-transformers loading."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.data import encode_groups, load_rows, ranking_groups
from rlhfkit.data.collate import collate_groups
from rlhfkit.trainers.reward import RewardConfig, build_reward_model, pair_weights, reward_step

try:
    from stage_helpers import FAST_TRAIN, WORDS, cli, model_dir, read_metrics, tokenizer, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import FAST_TRAIN, WORDS, cli, model_dir, read_metrics, tokenizer, write_jsonl


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # before the module's other fixtures, which train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("reward")


FILLER = [w for w in WORDS if w != "good"]


def rule_rows(n: int, seed: int) -> list[dict]:
    """Chosen responses contain the word "good" somewhere; rejected ones never do. Prompts all differ."""
    rng = random.Random(seed)

    def response(good):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        if good:
            words.insert(rng.randint(0, len(words)), "good")
        return " ".join(words) + "."

    return [{"prompt": f"what is the colour of the {rng.choice(WORDS[6:18])} {i}?",
             "chosen": response(True), "rejected": response(False)} for i in range(n)]


def reward_args(base, train, out, *extra):
    return ["reward", f"model.path={base}", f"data.train_file={train}", f"train.output_dir={out}",
            "data.max_length=64", "data.max_prompt_length=32", *FAST_TRAIN, *extra]


def scores_alone(model, group) -> list[float]:
    """Each response scored in a batch of its own (no padding): the independent reference."""
    from rlhfkit.models.heads import score_sequences

    with torch.no_grad():
        return [score_sequences(model, torch.tensor([group.prompt_ids + r]),
                                torch.ones(1, len(group.prompt_ids) + len(r), dtype=torch.long)).item()
                for r in group.response_ids]


def bt(x: float) -> float:
    return math.log1p(math.exp(-x))  # −log σ(x)


@pytest.fixture(scope="module")
def trained(root):
    base = model_dir(root, style="llama")  # no pad token: the reward model gets a dedicated one
    train = write_jsonl(root / "train.jsonl", rule_rows(160, seed=1))
    held_out = write_jsonl(root / "eval.jsonl", rule_rows(80, seed=2))
    out = root / "rule"
    assert cli(reward_args(base, train, out, f"data.eval_file={held_out}", "train.lr=3e-3",
                           "train.num_epochs=3", "train.per_device_batch_size=16")) == 0
    return base, train, held_out, out


def test_held_out_accuracy_on_a_learnable_rule(trained):
    *_, out = trained
    rows = read_metrics(out)
    assert len(rows) == 30  # 160 prompts / 16 × 3 epochs
    assert rows[-1]["eval/reward/accuracy"] >= 0.85  # chance is 0.5
    assert rows[-1]["eval/reward/margin"] > 0 and rows[-1]["eval/reward/pairs"] == 80
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert {"reward/accuracy", "reward/margin", "reward/score_mean", "reward/score_std"} <= set(rows[-1])


def test_plain_transformers_loads_it_with_the_same_raw_scores(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.models.heads import get_score_normalization, normalized_scores, score_sequences
    from rlhfkit.models.reward import load_reward_model

    *_, held_out, out = trained
    plain = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    plain_tok = AutoTokenizer.from_pretrained(out / "final")
    assert plain.config.num_labels == 1 and plain_tok.pad_token_id == plain.config.pad_token_id
    assert plain_tok.pad_token_id != plain_tok.eos_token_id
    rows = load_rows(held_out, "preference").rows[:6]
    texts = [plain_tok.apply_chat_template([{"role": "user", "content": r.prompt},
                                            {"role": "assistant", "content": r.chosen}], tokenize=False)
             for r in rows]
    batch = plain_tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    assert (batch["attention_mask"] == 0).any()  # padding is really exercised
    ours, _ = load_reward_model(out / "final")
    with torch.no_grad():
        plain_scores = plain(**batch).logits.squeeze(-1)
        raw = score_sequences(ours, batch["input_ids"], batch["attention_mask"])
        normalized = normalized_scores(ours, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(plain_scores, raw, atol=1e-5)
    gain, bias = get_score_normalization(ours)
    assert bias != 0.0 and torch.allclose(normalized, gain * raw + bias, atol=1e-6)


def test_reference_responses_average_zero_after_normalisation(trained):
    from rlhfkit.models.heads import normalized_scores
    from rlhfkit.models.reward import load_reward_model

    _, train, _, out = trained
    model, tok = load_reward_model(out / "final")
    rows = load_rows(train, "preference").rows
    groups, _ = encode_groups(tok, ranking_groups([]) or _pairs_as_groups(rows), max_length=64, max_prompt_length=32)
    batch = collate_groups(groups, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        scores = normalized_scores(model, batch["input_ids"], batch["attention_mask"])
    assert scores.numel() == 320  # every chosen and rejected response of the training set
    assert abs(scores.mean().item()) < 1e-4
    assert scores.std().item() > 0.1  # normalised, not collapsed
    saved = json.loads((out / "final" / "rlhfkit_normalization.json").read_text())
    assert saved["reference"]["count"] == 320 and saved["mode"] == "mean"


def _pairs_as_groups(rows):
    from rlhfkit.data import group_preferences_by_prompt

    return group_preferences_by_prompt(rows)


def test_ranking_of_three_is_three_pairs_scored_once_each(root):
    base = model_dir(root)
    cfg = load_config(RewardConfig, None, [f"model.path={base}", "data.train_file=x"])
    model, tok = build_reward_model(cfg, tokenizer())
    rows = load_rows([{"prompt": "what is the colour of the sun?",
                       "responses": ["the sun is yellow.", "the sun is blue.", "the sun is good yellow."],
                       "ranking": [2, 0, 1]},
                      {"prompt": "what is the colour of the sky?", "responses": ["blue.", "red."],
                       "ranking": [1, 0]}], "ranking").rows
    groups, _ = encode_groups(tok, ranking_groups(rows))
    batch = collate_groups(groups, pad_token_id=tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 5  # 3 + 2 responses, each scored once (not once per pair)
    s = scores_alone(model, groups[0])
    t = scores_alone(model, groups[1])
    sun = [bt(s[2] - s[0]), bt(s[2] - s[1]), bt(s[0] - s[1])]  # ranking [2, 0, 1] by hand
    sky = [bt(t[1] - t[0])]
    with torch.no_grad():
        per_prompt, metrics = reward_step(model, batch, 0.0, "prompt")
        per_pair, _ = reward_step(model, batch, 0.0, "pair")
        alone, _ = reward_step(model, collate_groups(groups[:1], pad_token_id=tok.pad_token_id), 0.0, "prompt")
    assert alone.item() == pytest.approx(sum(sun) / 3, rel=1e-5)
    assert per_prompt.item() == pytest.approx((sum(sun) / 3 + sky[0]) / 2, rel=1e-5)
    assert per_pair.item() == pytest.approx((sum(sun) + sky[0]) / 4, rel=1e-5)
    wins = [s[2] > s[0], s[2] > s[1], s[0] > s[1]]
    assert metrics["reward/accuracy"].item() == pytest.approx((sum(wins) / 3 + (t[1] > t[0])) / 2, abs=1e-6)


@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_margin_enters_the_logged_first_step_loss_as_in_the_formula(root, margin):
    """The first step's logged loss through the CLI equals −log σ(r_w − r_l − m), averaged by hand, with
    the scores of the freshly built (seeded) reward model."""
    base = model_dir(root)
    rows = rule_rows(4, seed=5)
    train = write_jsonl(root / f"margin-{margin}.jsonl", rows)
    out = root / f"margin-{margin}"
    assert cli(reward_args(base, train, out, f"margin={margin}", "train.max_steps=1", "train.shuffle=false",
                           "train.per_device_batch_size=2", "train.grad_accum_steps=2")) == 0
    cfg = load_config(RewardConfig, None, [f"model.path={base}", f"data.train_file={train}"])
    model, tok = build_reward_model(cfg, tokenizer())
    groups, _ = encode_groups(tok, _pairs_as_groups(load_rows(train, "preference").rows),
                              max_length=64, max_prompt_length=32)
    expected = []
    for group in groups:
        (chosen, rejected), = group.pairs
        s = scores_alone(model, group)
        expected.append(bt(s[chosen] - s[rejected] - margin))
    assert read_metrics(out)[0]["train/loss"] == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_pair_weights_sum_to_one_and_share_per_prompt():
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    assert pair_weights(groups, 3, "prompt").tolist() == pytest.approx([1 / 9] * 3 + [1 / 3] + [1 / 6] * 2)
    assert pair_weights(groups, 3, "pair").tolist() == pytest.approx([1 / 6] * 6)
    with pytest.raises(ValueError, match="valid: prompt, pair"):
        pair_weights(groups, 3, "group")


def test_mean_std_normalisation_and_ranking_files_through_the_cli(root):
    from rlhfkit.models.heads import normalized_scores
    from rlhfkit.models.reward import load_reward_model

    base = model_dir(root)
    rng = random.Random(3)
    rows = []
    for i in range(12):
        responses = [" ".join(rng.choice(FILLER) for _ in range(4)) + "." for _ in range(3)]
        rows.append({"prompt": f"what is the colour of the sun {i}?", "responses": responses, "ranking": [1, 2, 0]})
    train = write_jsonl(root / "rankings.jsonl", rows)
    references = write_jsonl(root / "samples.jsonl", [{"prompt": f"what is the colour of the moon {i}?",
                                                       "response": f"the moon is {c}."}
                                                      for i, c in enumerate(WORDS[:6])])
    out = root / "rank"
    assert cli(reward_args(base, train, out, "train.max_steps=3", "train.per_device_batch_size=4",
                           "normalize.mode=mean_std", f"normalize.reference_file={references}")) == 0
    report = json.loads((out / "data_report.json").read_text())["train"]
    assert report["format"] == "ranking" and report["groups"] == 12 and report["pairs"] == 36
    model, tok = load_reward_model(out / "final")
    from rlhfkit.data import encode_sft

    examples, _ = encode_sft(tok, load_rows(references, "sft").rows, max_length=64, max_prompt_length=32)
    from rlhfkit.data.collate import collate_sft

    batch = collate_sft(examples, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        scores = normalized_scores(model, batch["input_ids"], batch["attention_mask"])
    assert abs(scores.mean().item()) < 1e-4 and scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_identical_pair_fails_naming_the_line_before_anything_is_written(root, capsys):
    base = model_dir(root)
    rows = rule_rows(4, seed=7)
    rows[1]["rejected"] = rows[1]["chosen"]
    bad = write_jsonl(root / "identical.jsonl", rows)
    assert cli(reward_args(base, bad, root / "never")) == 2
    err = capsys.readouterr().err
    assert "identical.jsonl line 2" in err and "identical" in err
    assert not (root / "never").exists()
    assert cli(reward_args(base, bad, root / "dropped", "data.identical=drop", "train.max_steps=1")) == 0
    assert json.loads((root / "dropped" / "data_report.json").read_text())["train"]["rows_dropped_loading"] == 1


def test_lora_reward_model_is_saved_merged_for_plain_transformers(root):
    from transformers import AutoModelForSequenceClassification

    base = model_dir(root)
    train = write_jsonl(root / "lora.jsonl", rule_rows(16, seed=9))
    out = root / "lora"
    assert cli(reward_args(base, train, out, "lora.enabled=true", "lora.r=4", "train.max_steps=4",
                           "train.lr=1e-2", "train.per_device_batch_size=4")) == 0
    final = out / "final"
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.rlhfkit_score_offset != 0.0


def test_recipe_loads():
    cfg = load_config(RewardConfig, "configs/reward.yaml")
    assert cfg.pair_weighting == "prompt" and cfg.normalize.mode == "mean" and cfg.model.path == "runs/sft/final"


def test_a_refused_resume_leaves_the_previous_data_report(root, capsys):
    base = model_dir(root)
    out = root / "report-kept"
    first = write_jsonl(root / "first.jsonl", rule_rows(6, seed=11))
    assert cli(reward_args(base, first, out, "train.max_steps=1")) == 0
    before = (out / "data_report.json").read_text()
    other = write_jsonl(root / "other.jsonl", rule_rows(9, seed=12))
    assert cli(reward_args(base, other, out, "train.max_steps=1")) == 2  # another data file: refused
    assert "cannot resume" in capsys.readouterr().err
    assert (out / "data_report.json").read_text() == before
