"""Tools in the chat template (docs/tools.md §2): an environment's tool schemas reach ``apply_chat_template(...,
tools=...)`` for the prompts online RL and ``rlhfkit eval`` encode; a template that lists tools shows the model
their names and JSON schemas, one that does not (the built-in world's) renders the same bytes with or without
them, and ``"raw"`` prompts are the user's own text."""

from __future__ import annotations

import json

import pytest
from data_fixtures import tiny_tokenizer

from rlhfkit.data.encode import encode_prompt
from rlhfkit.data.formats import Message, PromptRow
from rlhfkit.data.templates import render_prompt, split_conversation
from rlhfkit.envs import JsonSyntax, ToolEnvironment, tool, tool_schemas
from rlhfkit.models.tiny import CHATML_TEMPLATE, WORLD_CHAT_TEMPLATE

# Qwen-2.5-like: a system turn listing each tool as one JSON line between <tools> tags, only when tools are given.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{% for t in tools %}\n{{ t | tojson }}{% endfor %}"
    "\n</tools><|im_end|>\n{% endif %}" + CHATML_TEMPLATE
)


@tool
def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return str(a + b)


def environment() -> ToolEnvironment:
    return ToolEnvironment([add], JsonSyntax())


def listed_tools(text: str) -> list[dict]:
    """The schemas a TOOLS_TEMPLATE rendering lists, parsed back from its JSON lines."""
    if "<tools>" not in text:
        return []
    block = text[text.index("<tools>") + len("<tools>") : text.index("</tools>")]
    return [json.loads(line) for line in block.splitlines() if line]


def test_tool_schemas_are_the_environments_and_none_without_tools():
    assert tool_schemas(environment()) == [add.schema()] and add.schema()["function"]["name"] == "add"
    assert tool_schemas(None) is None
    assert tool_schemas(ToolEnvironment([], JsonSyntax())) is None  # no tools: nothing for `tools is not none`

    class StepOnly:  # any object with step is an environment
        def step(self, conversation):
            return None

    assert tool_schemas(StepOnly()) is None


@pytest.mark.parametrize("prompt", ["what is one plus two?", [Message("user", "what is one plus two?")]])
def test_a_template_that_lists_tools_renders_their_names_and_schemas(prompt):
    tok = tiny_tokenizer("qwen2")
    tools = tool_schemas(environment())
    text = render_prompt(tok, prompt, template=TOOLS_TEMPLATE, tools=tools)
    assert listed_tools(text) == tools and '"name": "add"' in text
    assert text.endswith("<|im_start|>assistant\n")
    # independent: transformers' own rendering of the same messages and tools
    assert text == tok.apply_chat_template([{"role": "user", "content": "what is one plus two?"}], tools=tools,
                                           chat_template=TOOLS_TEMPLATE, tokenize=False, add_generation_prompt=True)
    without = render_prompt(tok, prompt, template=TOOLS_TEMPLATE)
    assert "<tools>" not in without and "add" not in without and text.endswith(without)


def test_split_conversation_keeps_the_prompt_a_prefix_with_tools():
    tok = tiny_tokenizer("qwen2")
    tools = tool_schemas(environment())
    prompt_text, response_text = split_conversation(tok, "one plus two?", "three", template=TOOLS_TEMPLATE,
                                                    tools=tools)
    assert prompt_text == render_prompt(tok, "one plus two?", template=TOOLS_TEMPLATE, tools=tools)
    assert listed_tools(prompt_text) == tools and response_text == "three<|im_end|>"
    full = tok.apply_chat_template([{"role": "user", "content": "one plus two?"},
                                    {"role": "assistant", "content": "three"}], tools=tools,
                                   chat_template=TOOLS_TEMPLATE, tokenize=False)
    assert full.startswith(prompt_text + response_text)


def test_raw_prompts_are_the_users_own_text_and_never_get_tools():
    tok = tiny_tokenizer("qwen2")
    tools = tool_schemas(environment())
    assert render_prompt(tok, "calc: ", template="raw", tools=tools) == "calc: "
    assert split_conversation(tok, "calc: ", "1 =", template="raw", tools=tools) == ("calc: ", "1 =")


@pytest.mark.parametrize("style", ["world", "llama"])
def test_the_worlds_template_renders_the_same_bytes_with_and_without_tools(style):
    """The built-in world's template (rlhfkit.models.tiny.WORLD_CHAT_TEMPLATE, which ``train_world_tokenizer``
    gives the world's tokenizer) never reads ``tools``: its calculator environment must not move a prompt."""
    from rlhfkit.worlds.calculator import environment as world_environment

    tok = tiny_tokenizer(style)
    assert WORLD_CHAT_TEMPLATE in tok.chat_template  # llama's is BOS + the world's
    tools = tool_schemas(world_environment())
    assert tools and tools[0]["function"]["name"] == "calc"
    rows = [PromptRow("what is one plus two?", origin="a"),
            PromptRow([Message("system", "be brief"), Message("user", "two plus three?")], origin="b")]
    for row in rows:
        with_tools = render_prompt(tok, row.prompt, tools=tools)
        assert with_tools == render_prompt(tok, row.prompt)
        assert "calc" not in with_tools
    encoded = [[e.prompt_ids for e in encode_prompt(tok, rows, tools=t)[0]] for t in (tools, None)]
    assert encoded[0] == encoded[1]


def test_encode_prompt_encodes_the_tools_the_template_lists():
    tok = tiny_tokenizer("qwen2")
    tools = tool_schemas(environment())
    rows = [PromptRow("what is one plus two?", origin="row 1")]
    (with_tools,), _ = encode_prompt(tok, rows, template=TOOLS_TEMPLATE, tools=tools)
    (without,), _ = encode_prompt(tok, rows, template=TOOLS_TEMPLATE)
    assert listed_tools(tok.decode(with_tools.prompt_ids)) == tools
    assert "<tools>" not in tok.decode(without.prompt_ids)
    assert with_tools.prompt_ids[-len(without.prompt_ids):] == without.prompt_ids


# ---- through the trainer: what ppo.train encodes (GRPO, RLOO and PPO share it) ------------------------------------


class Stop(Exception):
    """Raised where the models are built: everything this file checks happens before training."""


def tools_policy(root):
    """A micro policy whose own chat template lists tools (as a Qwen model's does)."""
    from ppo_fixtures import save_policy_folder

    from rlhfkit.models.load import load_tokenizer

    folder = save_policy_folder(root, "tools-policy", style="qwen2")
    tok = load_tokenizer(folder)
    tok.chat_template = TOOLS_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def train_until_the_models(tmp_path, monkeypatch, *overrides):
    """Run ``ppo.train`` up to its loop; returns (the prompts it encoded, as text; the environments it loaded;
    the models it built)."""
    from ppo_fixtures import ppo_config

    from rlhfkit.trainers import critic_free, ppo

    cfg = ppo_config(tmp_path, "data.max_prompt_length=512", "data.max_length=600", *overrides,
                     policy=tools_policy(tmp_path))
    loaded, encoded, built = [], [], []
    real_load, real_encode, real_build = critic_free.load_environment, ppo.encode_prompts, critic_free.build_online_models
    monkeypatch.setattr(critic_free, "load_environment", lambda *a: loaded.append(real_load(*a)) or loaded[-1])
    monkeypatch.setattr(ppo, "encode_prompts", lambda *a: encoded.append(real_encode(*a)) or encoded[-1])
    monkeypatch.setattr(critic_free, "build_online_models", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    monkeypatch.setattr(ppo, "TrainLoop", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        ppo.train(cfg)
    (prompts, _rows), = encoded
    tok = built[0].tokenizer
    return [tok.decode(p.prompt_ids) for p in prompts], loaded, built[0]


@pytest.mark.parametrize("estimator", ["grpo", "gae"])
def test_online_rl_prompts_list_the_environments_tools_loaded_once(tmp_path, monkeypatch, estimator):
    extra = ["advantage.estimator=grpo", "rollout.n=2"] if estimator == "grpo" else []  # both scored by the RM
    # this module's own environment(), by the "module:factory" path a user's recipe would name
    texts, loaded, models = train_until_the_models(tmp_path, monkeypatch,
                                                   "rollout.environment=test_templates_tools:environment", *extra)
    assert len(loaded) == 1 and models.environment is loaded[0]  # one object: the prompts' tools, the episodes
    schemas = loaded[0].schemas()
    assert schemas[0]["function"]["name"] == "add"
    for text in texts:
        assert listed_tools(text) == schemas and text.endswith("<|im_start|>assistant\n")


def test_online_rl_prompts_have_no_tools_without_an_environment(tmp_path, monkeypatch):
    texts, loaded, models = train_until_the_models(tmp_path, monkeypatch)
    assert loaded == [] and models.environment is None
    assert texts and all("<tools>" not in t and t.startswith("<|im_start|>user\n") for t in texts)


def test_eval_samples_episodes_from_prompts_that_list_the_tools():
    """``rlhfkit eval --environment`` samples through ``sample_policy``: its prompts list the tools as training's do."""
    import torch

    from rlhfkit.evaluate.sampling import sample_policy
    from rlhfkit.models.tiny import build_tiny_model

    torch.set_num_threads(1)
    tok = tiny_tokenizer("qwen2")
    model = build_tiny_model("llama", "micro", tok, seed=0)
    env = environment()
    for played, listed in ((env, tool_schemas(env)), (None, [])):
        samples = sample_policy(model, tok, ["one plus two?"], 1, seed=0, max_new_tokens=4, template=TOOLS_TEMPLATE,
                                environment=played, max_turns=2)
        g = samples.generation
        assert listed_tools(tok.decode(g.prompt_ids[0][g.prompt_mask[0].bool()].tolist())) == listed
