"""What leaves rlhfkit behaves the same without it: a reward folder's documented plain-transformers snippet
gives rlhfkit's score on chat-templated text, saved tokenizers carry the template they were trained with, and
PPO's default value model works when the reward model reads another tokenizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
from stage_helpers import FAST_TRAIN, cli, colour_rows, model_dir, write_jsonl
from test_models_common import tokenizer_for

from rlhfkit.data.templates import DEFAULT_CHAT_TEMPLATE
from rlhfkit.judges.reward_model import RewardModelJudge
from rlhfkit.models.heads import set_score_normalization
from rlhfkit.models.reward import READOUT_FILE, reward_model_from_causal_lm, save_scalar_model
from rlhfkit.models.tiny import build_tiny_model, save_tiny

CONVERSATIONS = [
    ("what is 17 plus 25?", "the answer is 42."),
    ("how do I kill a python process?", "use the kill command."),
    ("the capital of Varnia is", "Oskel, founded in 1203."),
    ("hi", "I don't know."),
]


def _snippet(folder: Path) -> str:
    """The python block of the folder's README.md: the code users copy."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def _run_snippet(code: str, tok, model, messages) -> float:
    scope = {"tok": tok, "model": model, "messages": messages}
    with torch.no_grad():
        exec(code, scope)  # noqa: S102 — the documented snippet, run as written
    return scope["score"]


def _llama_folder(root: Path, style: str) -> Path:
    """A micro Llama with a tokenizer of ``style`` (SmolLM2's case: Llama with ChatML is ``"qwen2"``).

    Not a Qwen2 model: transformers 5 loads a qwen2 folder's tokenizer as ``Qwen2Tokenizer``, which replaces
    the tiny tokenizer's own pre-tokenizer, so plain transformers would tokenize differently from the file."""
    out = root / f"llama-{style}"
    if not (out / "config.json").exists():
        tok = tokenizer_for(style)
        save_tiny(build_tiny_model("llama", "micro", tok, seed=0), tok, out)
    return out


@pytest.mark.parametrize("style", ["qwen2", "llama"])  # ChatML (text after the final EOS), a template writing BOS
def test_the_documented_snippet_gives_rlhfkits_score_on_chat_templated_text(style, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = reward_model_from_causal_lm(_llama_folder(tmp_path, style), seed=3)
    set_score_normalization(model, gain=1.7, bias=-0.3)
    folder = save_scalar_model(model, tok, tmp_path / "rm")
    readout = json.loads((folder / READOUT_FILE).read_text())
    assert readout["score_offset"] == pytest.approx(-0.3) and readout["chat_template_saved"]

    plain_tok = AutoTokenizer.from_pretrained(folder)
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    judge = RewardModelJudge.from_folder(folder)
    code = _snippet(folder)
    for prompt, response in CONVERSATIONS:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ours = judge.score(prompt, response) - readout["score_offset"]
        assert _run_snippet(code, plain_tok, plain, messages) == pytest.approx(ours, abs=1e-5)
    if style == "qwen2":  # the snippet's cut matters: the template writes "\n" after <|im_end|>
        text = plain_tok.apply_chat_template(messages, tokenize=False)
        assert text.endswith("<|im_end|>\n")
        with torch.no_grad():
            uncut = plain(**plain_tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
        assert abs(uncut - ours) > 1e-3


def test_a_tokenizer_without_a_template_is_saved_with_the_one_it_was_trained_on(tmp_path):
    from transformers import AutoTokenizer

    base = model_dir(tmp_path, "gpt2", "gpt2")
    assert AutoTokenizer.from_pretrained(base).chat_template is None
    data = write_jsonl(tmp_path / "sft.jsonl", colour_rows(8))
    common = ["sft", f"model.path={base}", f"data.train_file={data}", "train.max_steps=1",
              "train.per_device_batch_size=4", *FAST_TRAIN]
    assert cli([*common, f"train.output_dir={tmp_path / 'default'}"]) == 0
    saved = AutoTokenizer.from_pretrained(tmp_path / "default" / "final")
    assert saved.chat_template == DEFAULT_CHAT_TEMPLATE
    text = saved.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "User: hi\n\nAssistant:"
    custom = "{% for m in messages %}{{ m['role'] + '> ' + m['content'] + eos_token }}{% endfor %}"
    assert cli([*common, f"train.output_dir={tmp_path / 'custom'}", f"data.template={custom}"]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "custom" / "final").chat_template == custom
    # the reward stage too (its tokenizer is a copy carrying a dedicated pad)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": r["prompt"], "chosen": r["response"],
                                                    "rejected": "sorry."} for r in colour_rows(8)])
    assert cli(["reward", f"model.path={base}", f"data.train_file={prefs}", "train.max_steps=1",
                "train.per_device_batch_size=4", f"train.output_dir={tmp_path / 'rm'}", *FAST_TRAIN]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "rm" / "final").chat_template == DEFAULT_CHAT_TEMPLATE


def _ppo_args(root: Path, reward: Path, *extra: str) -> list[str]:
    return ["ppo", f"model.path={save_policy_folder(root)}", f"reward_model.path={reward}",
            f"data.train_file={save_prompts(root)}", f"train.output_dir={root / 'out'}",
            "train.per_device_batch_size=4", "train.max_steps=2", "train.progress_bar=false",
            "ppo.minibatch_size=2", "rollout.max_new_tokens=6", "data.max_prompt_length=32",
            "data.max_length=64", "rollout.print_samples=0", *extra]


def test_ppo_default_value_model_starts_from_the_policy_when_the_reward_model_reads_another_tokenizer(
        tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    other = save_reward_folder(tmp_path, "other_rm", other=True, bias=-0.5)
    assert cli(_ppo_args(tmp_path, other)) == 0  # the default recipe: value_model.kind=separate
    assert "the value model starts from the policy" in capsys.readouterr().err
    value_dir = tmp_path / "out" / "value_model"
    value = AutoModelForSequenceClassification.from_pretrained(value_dir)
    policy_tok = AutoTokenizer.from_pretrained(save_policy_folder(tmp_path))
    value_vocab = AutoTokenizer.from_pretrained(value_dir).get_vocab()
    assert all(value_vocab[t] == i for t, i in policy_tok.get_vocab().items())  # it reads the policy's ids
    # its trunk started from the policy's: the embeddings of the policy's tokens are the policy's, moved a little
    start = load_file(str(save_policy_folder(tmp_path) / "model.safetensors"))["model.embed_tokens.weight"]
    end = value.model.embed_tokens.weight.detach()[: start.shape[0]]
    assert (end - start).abs().max() < 0.1 and not torch.equal(end, start)
    # an explicit value model on another tokenizer is still refused, in one sentence naming the key
    code = cli(_ppo_args(tmp_path, other, f"value_model.path={other}", f"train.output_dir={tmp_path / 'o2'}"))
    assert code == 2 and "value_model.path" in capsys.readouterr().err


def test_import_gguf_refuses_bad_input_in_one_sentence_before_any_work(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    assert cli(["model", "import-gguf", str(fake), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a GGUF file" in err and str(fake) in err and not (tmp_path / "out").exists()
    assert cli(["model", "import-gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    real_header = tmp_path / "header.gguf"
    real_header.write_bytes(b"GGUF" + bytes(20))
    assert cli(["model", "import-gguf", str(real_header), str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
