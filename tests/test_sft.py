"""SFT through the real CLI on micro models: learning, the response-only token-mean loss, packing, LoRA
folders that peft / plain transformers load, validation before any work."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.data import encode_sft, load_rows
from rlhfkit.data.collate import collate_sft
from rlhfkit.ops import IGNORE_INDEX
from rlhfkit.trainers.pretrain import causal_lm_step, collate_packed, pack_examples
from rlhfkit.trainers.sft import SFTConfig, load_sft_data

try:
    from stage_helpers import FAST_TRAIN, cli, colour_rows, model_dir, read_metrics, tokenizer, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import (
        FAST_TRAIN,
        cli,
        colour_rows,
        model_dir,
        read_metrics,
        tokenizer,
        write_jsonl,
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # before the module's other fixtures, which train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="module")
def base(root):
    return model_dir(root)


@pytest.fixture(scope="module")
def demos(root):
    return write_jsonl(root / "demos.jsonl", colour_rows(8))


def sft_args(base, demos, out, *extra):
    return ["sft", f"model.path={base}", f"data.train_file={demos}", f"train.output_dir={out}",
            "data.max_length=48", "data.max_prompt_length=24", *FAST_TRAIN, *extra]


def manual_token_mean_nll(model, examples) -> float:
    """Independent computation: a Python loop over every response token of every example, one at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]  # (T, V), no padding at all
            logp = torch.log_softmax(logits.double(), dim=-1)
            for t in range(len(e.prompt_ids), len(e.input_ids)):  # token t is predicted at position t − 1
                total -= logp[t - 1, e.input_ids[t]].item()
                count += 1
    return total / count


def test_sft_learns_and_final_folder_loads_with_plain_transformers(root, base, demos, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = root / "full"
    assert cli(sft_args(base, demos, out, f"data.eval_file={demos}", "train.lr=1e-2", "train.max_steps=40",
                        "train.per_device_batch_size=4")) == 0
    rows = read_metrics(out)
    assert len(rows) == 40
    assert rows[-1]["train/loss"] < 0.3 * rows[0]["train/loss"]
    assert rows[-1]["sft/nll"] == pytest.approx(rows[-1]["train/loss"])
    assert "0 dropped" in capsys.readouterr().err  # the encode report is printed
    # plain transformers, plain tokenizer: the same eval NLL as the one logged at the last step
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(out / "final")
    examples, _ = encode_sft(plain_tokenizer, load_rows(demos, "sft").rows, max_length=48, max_prompt_length=24)
    assert manual_token_mean_nll(model, examples) == pytest.approx(rows[-1]["eval/sft/nll"], abs=1e-5)
    assert (out / "final" / "rlhfkit_sft.yaml").exists()


@pytest.mark.parametrize("attention", [None, "eager"])
@pytest.mark.parametrize("packing", [False, True])
def test_first_step_loss_is_the_response_token_mean_over_the_global_batch(root, base, demos, packing, attention):
    """2 micro-batches × 2 examples (unpacked) of different token counts: the logged loss of step 1 is the
    token mean over all 4 examples' response tokens, computed independently on the untrained model (with
    transformers' default attention kernel, whichever kernel the run trains with)."""
    from rlhfkit.models.load import load_causal_lm

    rows = colour_rows(4)
    rows[1]["response"] = "the cat is red and blue and green and yellow."  # unequal response lengths
    data = write_jsonl(root / f"step1-{packing}.jsonl", rows)
    out = root / f"step1-{packing}-{attention}"
    batch = ["train.per_device_batch_size=1", "train.grad_accum_steps=4"] if packing else \
        ["train.per_device_batch_size=2", "train.grad_accum_steps=2"]
    kernel = [f"model.attn_implementation={attention}"] if attention else []
    assert cli(sft_args(base, data, out, "train.shuffle=false", "train.max_steps=1", "train.lr=1e-3",
                        f"packing={str(packing).lower()}", *batch, *kernel)) == 0
    logged = read_metrics(out)[0]["train/loss"]
    examples, _ = encode_sft(tokenizer(), load_rows(data, "sft").rows, max_length=48, max_prompt_length=24)
    expected = manual_token_mean_nll(load_causal_lm(base), examples)
    assert logged == pytest.approx(expected, rel=1e-5)
    # the mean of per-micro-batch means would differ: the check above can tell the two apart
    firsts = [manual_token_mean_nll(load_causal_lm(base), examples[i:i + 2]) for i in (0, 2)]
    assert abs(sum(firsts) / 2 - expected) > 1e-3


class ShiftedLogits(torch.nn.Module):
    """The model, with ``delta`` added to the logits at the positions in ``where`` (a boolean (B, T))."""

    def __init__(self, model, where, delta=5.0):
        super().__init__()
        self.model, self.where, self.delta = model, where, delta

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)) * self.delta
        return SimpleNamespace(logits=torch.where(self.where[..., None], logits + noise, logits))


def test_loss_is_on_response_tokens_only(base):
    """Labels are IGNORE on the prompt; logits that only predict prompt tokens cannot change the loss, the
    logit predicting the first response token does; and the loss equals the independent per-token loop."""
    from rlhfkit.models.load import load_causal_lm

    model = load_causal_lm(base)
    examples, _ = encode_sft(tokenizer(), load_rows(colour_rows(3), "sft").rows)
    batch = collate_sft(examples, pad_token_id=0)
    for e, labels in zip(examples, batch["labels"]):
        assert (labels[: len(e.prompt_ids)] == IGNORE_INDEX).all()
        assert labels[len(e.prompt_ids): len(e)].tolist() == e.response_ids
    with torch.no_grad():
        loss = causal_lm_step(model, batch)[0].item()
        assert loss == pytest.approx(manual_token_mean_nll(model, examples), rel=1e-5)
        n_prompt = torch.tensor([len(e.prompt_ids) for e in examples])[:, None]  # (B, 1)
        position = torch.arange(batch["input_ids"].shape[1])[None, :]  # (1, T)
        predicts_prompt = position < n_prompt - 1  # logits at t predict token t + 1
        padding = batch["attention_mask"] == 0
        unchanged = causal_lm_step(ShiftedLogits(model, predicts_prompt | padding), batch)[0].item()
        changed = causal_lm_step(ShiftedLogits(model, position == n_prompt - 1), batch)[0].item()
    assert unchanged == pytest.approx(loss, abs=1e-6)
    assert abs(changed - loss) > 1e-3


@pytest.mark.parametrize("arch,style", [("llama", "world"), ("gpt2", "gpt2"), ("qwen2", "qwen2"),
                                        ("gpt_neox", "llama")])
def test_packed_rows_give_each_example_its_unpacked_loss(root, arch, style):
    from rlhfkit.losses import sft_nll
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.ops import shift_labels

    model = load_causal_lm(model_dir(root, arch, style))
    rows = colour_rows(5)
    rows[2]["response"] = "the tree is green and the rock is black and the sun is yellow."
    examples, _ = encode_sft(tokenizer(style), load_rows(rows, "sft").rows)
    capacity = 2 * max(map(len, examples))  # room for any two examples: at most ⌈5/2⌉ rows
    packed = pack_examples([(e.input_ids, e.labels) for e in examples], max_length=capacity)
    assert len(packed) <= 3 and sum(r.n_sequences for r in packed) == len(examples)
    assert all(len(r) <= capacity for r in packed)
    unpacked = collate_sft(examples, pad_token_id=0)
    batch = collate_packed(packed, pad_token_id=0)
    with torch.no_grad():
        alone = sft_nll(model(input_ids=unpacked["input_ids"], attention_mask=unpacked["attention_mask"]).logits,
                        shift_labels(unpacked["labels"]))
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    together = sft_nll(logits, shift_labels(batch["labels"]))
    assert together.token_count.sum() == alone.token_count.sum()
    assert together.nll_sum.sum().item() == pytest.approx(alone.nll_sum.sum().item(), rel=1e-5)
    for i, e in enumerate(examples):  # each example's NLL, read from its span of its packed row
        row, start = next((r, s) for r, p in enumerate(packed) if (s := _find(p.input_ids, e.input_ids)) is not None)
        labels = torch.full_like(batch["labels"][row : row + 1], IGNORE_INDEX)
        labels[0, start : start + len(e)] = batch["labels"][row, start : start + len(e)]
        nll = sft_nll(logits[row : row + 1], shift_labels(labels)).nll_sum.item()
        assert nll == pytest.approx(alone.nll_sum[i].item(), rel=1e-5), i


def _find(haystack, needle):
    for s in range(len(haystack) - len(needle) + 1):
        if haystack[s : s + len(needle)] == needle:
            return s
    return None


def test_lora_adapter_folder_loads_in_peft_with_the_merged_logits(root, base, demos):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = ["lora.enabled=true", "lora.r=4", "train.lr=1e-2", "train.max_steps=15",
              "train.per_device_batch_size=4"]
    assert cli(sft_args(base, demos, root / "lora-adapter", *common, "lora.save_merged=false")) == 0
    assert cli(sft_args(base, demos, root / "lora-merged", *common)) == 0
    adapter = root / "lora-adapter" / "final"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    ids = torch.tensor([tokenizer()("what is the colour of the cat? the cat is")["input_ids"]])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(root / "lora-merged" / "final")(ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert torch.allclose(peft_logits, merged_logits, atol=1e-5)
    assert not torch.allclose(peft_logits, base_logits, atol=1e-2)  # it did train
    # only adapters trained: the merged folder differs from the base only in adapted projections
    merged, original = load_file(root / "lora-merged/final/model.safetensors"), load_file(base / "model.safetensors")
    changed = {k for k in original if not torch.equal(merged[k], original[k])}
    assert changed and all(k.split(".")[-2].endswith("proj") for k in changed)


def test_a_bad_row_fails_naming_file_line_field_before_anything_is_written(root, base, capsys):
    rows = colour_rows(4)
    rows[2] = {"prompt": "what is the colour of the sun?", "answer": "yellow."}
    bad = write_jsonl(root / "bad.jsonl", rows)
    out = root / "bad-run"
    assert cli(sft_args(base, bad, out)) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 3" in err and '"response"' in err
    assert not out.exists()
    # a bad eval file is caught before training too
    good = write_jsonl(root / "good.jsonl", colour_rows(4))
    assert cli(sft_args(base, good, out, f"data.eval_file={bad}")) == 2
    assert "bad.jsonl line 3" in capsys.readouterr().err and not out.exists()


def test_bad_config_and_model_folder_are_one_sentence(root, base, demos, capsys):
    assert cli(sft_args(base, demos, root / "x", "train.lrr=1")) == 2
    assert "unknown key train.lrr" in capsys.readouterr().err
    assert cli(sft_args(root / "nowhere", demos, root / "x")) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli(sft_args(base, demos, root / "x", "lora.save_merged=false")) == 2
    assert "lora.enabled" in capsys.readouterr().err
    assert cli(sft_args(base, demos, root / "x", "data.max_length=4096", "data.max_prompt_length=8")) == 2
    assert "512 positions" in capsys.readouterr().err
    assert not (root / "x").exists()


def test_truncation_is_counted_in_the_report(root, base, capsys):
    rows = colour_rows(3)
    rows[1]["response"] = " ".join(["the cat is red"] * 30) + "."
    data = write_jsonl(root / "long.jsonl", rows)
    out = root / "long"
    assert cli(sft_args(base, data, out, "train.max_steps=1")) == 0
    assert "1 responses truncated" in capsys.readouterr().err
    report = json.loads((out / "data_report.json").read_text())["train"]
    assert report["n_truncated_response"] == 1 and report["rows_kept"] == 3


def test_recipes_load_and_differ_in_a_few_keys():
    from rlhfkit.config import to_dict

    full, lora = load_config(SFTConfig, "configs/sft.yaml"), load_config(SFTConfig, "configs/sft_lora.yaml")
    assert not full.lora.enabled and lora.lora.enabled

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    differ = {k for k, v in flat(to_dict(full)).items() if flat(to_dict(lora))[k] != v}
    assert "lora.enabled" in differ and len(differ) <= 6


def test_packing_data_path_reports_fill(root, base, demos):
    cfg = load_config(SFTConfig, None, [f"model.path={base}", f"data.train_file={demos}", "packing=true",
                                         "data.max_length=48", "data.max_prompt_length=24"])
    data = load_sft_data(cfg, tokenizer())
    assert data.report["train"]["packed_rows"] == len(data.train) < 8
    assert math.isclose(sum(r.n_sequences for r in data.train), 8)


def test_a_refused_resume_leaves_the_previous_data_report(root, base, demos, capsys):
    out = root / "report-kept"
    assert cli(sft_args(base, demos, out, "train.max_steps=2")) == 0
    before = (out / "data_report.json").read_text()
    other = write_jsonl(root / "more-demos.jsonl", colour_rows(12))
    assert cli(sft_args(base, other, out, "train.max_steps=2")) == 2  # another data file: refused
    assert "cannot resume" in capsys.readouterr().err
    assert (out / "data_report.json").read_text() == before


def test_the_end_of_a_run_keeps_no_optimizer_state_unless_asked(root, base, demos, capsys):
    out = root / "retired"
    every = ("train.save_every=1", "train.save_total_limit=3")
    assert cli(sft_args(base, demos, out, "train.max_steps=4", *every)) == 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    assert sorted(p.name for p in (out / "checkpoint-4").iterdir()) == [
        "config.json", "manifest.json", "model", "rng_rank0.pt", "scheduler.pt", "trainer_state.json"]
    final = load_file(out / "final" / "model.safetensors")
    capsys.readouterr()
    # the same command again: complete; final/ re-exported from the kept weights, the same numbers
    assert cli(sft_args(base, demos, out, "train.max_steps=4", *every)) == 0
    assert "already complete" in capsys.readouterr().err
    again = load_file(out / "final" / "model.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    # training further needs the optimizer state: refused by name, nothing lost
    assert cli(sft_args(base, demos, out, "train.max_steps=6", *every)) == 2
    assert "keep_checkpoints_at_end" in capsys.readouterr().err
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    # asked to keep them: save_total_limit complete checkpoints, each with its optimizer state
    kept = root / "kept"
    assert cli(sft_args(base, demos, kept, "train.max_steps=4", *every, "train.keep_checkpoints_at_end=true")) == 0
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert all((p / "optimizer.pt").is_file() for p in kept.glob("checkpoint-*"))


def test_a_diverged_run_is_flagged_and_a_nan_stop_is_one_sentence(root, base, demos, capsys):
    out = root / "lr10"
    assert cli(sft_args(base, demos, out, "train.max_steps=8", "train.lr=10", "train.per_device_batch_size=4")) == 0
    err = capsys.readouterr().err
    assert "run doctor:" in err and "train/loss diverged" in err
    doctor = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "doctor"]
    assert [d["kind"] for d in doctor] == ["loss_divergence"]
    # a NaN loss stops the run: one sentence, exit 2 (no traceback)
    assert cli(sft_args(base, demos, root / "nan", "train.max_steps=4", "train.lr=1e9",
                        "train.max_grad_norm=null", "train.per_device_batch_size=4")) == 2
    err = capsys.readouterr().err
    assert err.count("rlhfkit sft: non-finite") == 1 and "Traceback" not in err


def test_a_normal_run_is_not_flagged_by_the_doctor(root, base, demos, capsys):
    out = root / "normal"
    assert cli(sft_args(base, demos, out, "train.max_steps=40", "train.lr=1e-2",
                        "train.per_device_batch_size=4")) == 0
    assert "run doctor" not in capsys.readouterr().err
