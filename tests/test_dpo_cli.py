"""``rlhfkit dpo`` end to end on a micro Llama: reference modes agree, LoRA's reference, learning, bad data,
the saved folder, and kill-and-resume in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main as cli
from rlhfkit.data import encode_preference, load_rows

try:
    from test_dpo_common import cli_args, learnable_rows, make_data, model_dir, read_metrics, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import (
        cli_args,
        learnable_rows,
        make_data,
        model_dir,
        read_metrics,
        write_jsonl,
    )

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def root(tmp_path):
    make_data(tmp_path)
    return tmp_path


def _eval_logps(model, tok, eval_file: Path) -> tuple[float, float]:
    """Mean summed log-prob of the eval chosen and rejected responses under ``model`` (independent forwards)."""
    examples, _ = encode_preference(tok, load_rows(eval_file, "preference").rows, max_length=64,
                                    max_prompt_length=32)
    totals = [0.0, 0.0]
    for e in examples:
        for k, response in enumerate((e.chosen_ids, e.rejected_ids)):
            ids = torch.tensor([e.prompt_ids + response])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            totals[k] += sum(float(logp[t - 1, ids[0, t]]) for t in range(len(e.prompt_ids), ids.shape[1]))
    return totals[0] / len(examples), totals[1] / len(examples)


def test_precomputed_and_on_the_fly_reference_give_the_same_steps(root):
    common = ("train.max_steps=6", "train.eval_every=3", "loss=rpo")
    assert cli(cli_args(root, "pre", "reference_mode=precompute", *common)) == 0
    assert cli(cli_args(root, "fly", "reference_mode=on_the_fly", *common)) == 0
    pre, fly = read_metrics(root / "pre"), read_metrics(root / "fly")
    assert [m["step"] for m in pre] == [m["step"] for m in fly] == [1, 2, 3, 4, 5, 6]
    keys = ["train/loss", "rewards/chosen", "rewards/margins", "logps/chosen_minus_ref", "rpo/nll"]
    for a, b in zip(pre, fly):
        for key in keys + [k for k in a if k.startswith("eval/")]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert abs(pre[-1]["rewards/margins"]) > 1e-2  # the policy moved: the agreement is not trivial


def test_lora_reference_is_the_policy_with_adapters_disabled(root):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    args = cli_args(root, "lora", "lora.enabled=true", "lora.r=4", "reference_mode=on_the_fly",
                    "train.max_steps=6", "train.lr=1e-2", "lora.save_merged=false")
    assert cli(args) == 0
    rows = read_metrics(root / "lora")
    assert abs(rows[0]["rewards/chosen"]) < 1e-6 and abs(rows[0]["rewards/rejected"]) < 1e-6  # π_θ = π_ref
    assert abs(rows[-1]["rewards/margins"]) > 1e-2
    final = root / "lora" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == model_dir(root).resolve()
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    reference_logps = _eval_logps(base, _tok(root), root / "eval.jsonl")
    policy = PeftModel.from_pretrained(base, str(final)).eval()
    chosen, _ = _eval_logps(policy, _tok(root), root / "eval.jsonl")
    assert rows[-1]["eval/logps/chosen"] == pytest.approx(chosen, abs=1e-3)
    assert rows[-1]["eval/logps/chosen_minus_ref"] == pytest.approx(chosen - reference_logps[0], abs=1e-3)


def test_lora_saved_merged_is_a_plain_transformers_folder_of_the_trained_policy(root):
    from transformers import AutoModelForCausalLM

    assert cli(cli_args(root, "merged", "lora.enabled=true", "lora.r=4", "train.max_steps=4", "train.lr=1e-2")) == 0
    final = root / "merged" / "final"
    assert not (final / "adapter_config.json").exists()
    chosen, rejected = _eval_logps(AutoModelForCausalLM.from_pretrained(final).eval(), _tok(root),
                                   root / "eval.jsonl")
    last = read_metrics(root / "merged")[-1]
    assert last["eval/logps/chosen"] == pytest.approx(chosen, abs=1e-3)
    assert last["eval/logps/rejected"] == pytest.approx(rejected, abs=1e-3)
    assert abs(last["eval/logps/chosen_minus_ref"]) > 1e-3  # the adapters were merged in, not dropped


def test_lora_on_the_fly_keeps_no_second_model(root):
    from rlhfkit.config import load_config
    from rlhfkit.trainers.dpo import DPOConfig, load_models, prepare_reference
    from rlhfkit.trainers.reference_cache import AdaptersOffReference

    cfg = load_config(DPOConfig, None, cli_args(root, "x", "lora.enabled=true", "reference_mode=on_the_fly")[1:])
    policy, reference = load_models(cfg)
    policy, sources, tables, _ = prepare_reference(cfg, policy, reference, _tok(root), {"train": []}, "cpu", True)
    assert reference is None and isinstance(sources["train"], AdaptersOffReference) and tables["train"] is None


def _tok(root):
    from rlhfkit.models.load import load_tokenizer

    return load_tokenizer(model_dir(root))


@pytest.mark.parametrize("swap", [False, True], ids=["with-word-preferred", "without-word-preferred"])
def test_training_on_a_learnable_preference_wins_on_held_out_pairs(tmp_path, swap):
    from transformers import AutoModelForCausalLM

    make_data(tmp_path, n_train=96, n_eval=48)
    if swap:  # learning the opposite preference too shows it is the word, not the length, that is learned
        for name in ("train.jsonl", "eval.jsonl"):
            rows = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
            write_jsonl(tmp_path / name, [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    args = cli_args(tmp_path, "run", "train.num_epochs=4", "train.eval_every=6", "beta=0.5")
    assert cli(args) == 0
    rows = read_metrics(tmp_path / "run")
    evals = [r for r in rows if "eval/rewards/accuracies" in r]
    assert evals[-1]["eval/rewards/accuracies"] >= 0.85
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"] > 0
    # the saved folder is the trained policy: plain transformers reproduces the logged eval log-probs
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").eval()
    chosen, rejected = _eval_logps(final, _tok(tmp_path), tmp_path / "eval.jsonl")
    assert evals[-1]["eval/logps/chosen"] == pytest.approx(chosen, abs=1e-3)
    assert evals[-1]["eval/logps/rejected"] == pytest.approx(rejected, abs=1e-3)


def test_rankings_are_flattened_into_pairs(tmp_path):
    rows = [{"prompt": r["prompt"], "responses": [r["rejected"], r["chosen"], r["rejected"] + " no"],
             "ranking": [1, 0, 2]} for r in learnable_rows(8, seed=4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    args = cli_args(tmp_path, "rank", "data_kind=ranking", "train.max_steps=2", "data.eval_file=null")
    assert cli(args) == 0
    assert read_metrics(tmp_path / "rank")[-1]["train/samples_seen"] == 16  # 8 rankings × 3 pairs, 2 steps of 8


@pytest.mark.parametrize("which,line,fault", [
    ("train", 3, "identical"), ("train", 2, "missing"), ("eval", 4, "identical")])
def test_bad_data_is_one_sentence_naming_file_line_and_field_before_any_work(root, capsys, which, line, fault):
    path = root / f"{which}.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    if fault == "identical":
        rows[line - 1]["rejected"] = rows[line - 1]["chosen"]
    else:
        del rows[line - 1]["chosen"]
    write_jsonl(path, rows)
    assert cli(cli_args(root, "bad")) == 2
    err = capsys.readouterr().err
    field = "rejected" if fault == "identical" else "chosen"
    assert f'{path} line {line}, field "{field}"' in err and "Traceback" not in err
    assert not (root / "bad").exists() and not (root / ".rlhfkit-cache").exists()


def test_resuming_on_changed_rows_of_the_same_count_fails_by_name(root, capsys):
    assert cli(cli_args(root, "run", "train.max_steps=2")) == 0
    rows = [json.loads(x) for x in (root / "train.jsonl").read_text().splitlines()]
    original = list(rows)
    rows[5] = {**rows[5], "rejected": rows[5]["rejected"] + " far"}
    write_jsonl(root / "train.jsonl", rows)
    capsys.readouterr()
    assert cli(cli_args(root, "run", "train.max_steps=2")) == 2
    assert "cannot resume: the training pairs" in capsys.readouterr().err
    write_jsonl(root / "train.jsonl", original)
    assert cli(cli_args(root, "run", "train.max_steps=2")) == 0
    assert "already complete" in capsys.readouterr().err


def test_a_bad_config_key_is_named(root, capsys):
    assert cli(cli_args(root, "x", "label_smoothing=0.1")) == 2
    assert "label_smoothing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- kill and resume

KILLER = """
import os, signal, sys
from rlhfkit.engine.loop import TrainLoop
finish_step, kill_after = TrainLoop.finish_step, int(os.environ["DPO_KILL_AFTER_STEP"])
def finish_then_die(self, metrics=None):
    finish_step(self, metrics)
    if self.step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
TrainLoop.finish_step = finish_then_die
from rlhfkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if kill_after is None:
        command = [sys.executable, "-m", "rlhfkit.cli", *args]
    else:
        command = [sys.executable, "-c", KILLER, *args]
        env["DPO_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    ("reference_mode=precompute", "group_by_length=true", "train.grad_accum_steps=2",
     "train.per_device_batch_size=4"),
    ("lora.enabled=true", "lora.r=4", "reference_mode=on_the_fly", "train.lr=1e-2"),
], ids=["precompute-grouped", "lora-on-the-fly"])
def test_a_run_killed_mid_epoch_resumes_in_a_new_process_to_the_same_weights(tmp_path, variant):
    make_data(tmp_path, n_train=40, n_eval=8)
    common = ("train.num_epochs=2", "train.save_every=3", "train.eval_every=4", "loss=rpo", *variant)
    straight = _run(cli_args(tmp_path, "straight", *common))
    assert straight.returncode == 0, straight.stderr
    killed = _run(cli_args(tmp_path, "resumed", *common), kill_after=7)
    assert killed.returncode == -9, killed.stderr  # SIGKILL after step 7; checkpoint-6 is the latest
    assert not (tmp_path / "resumed" / "final").exists()
    resumed = _run(cli_args(tmp_path, "resumed", *common))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step 6/10" in resumed.stderr
    if "reference_mode=precompute" in variant:
        assert resumed.stderr.count("read from") == 2  # the reference tables survive the kill
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 11))
    for x, y in zip(a, b):
        assert x["train/loss"] == pytest.approx(y["train/loss"], abs=1e-6)
    final_a, final_b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], atol=1e-6, rtol=0)
