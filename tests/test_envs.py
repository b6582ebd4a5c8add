"""Multi-turn episodes with tools (rlhfkit.envs): tools and their schema, the two call syntaxes, the tool
environment's error observations, the episode runner's masks on a scripted micro model, environment tokens
with zero gradient and zero KL, and a GRPO run with an environment through the CLI."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from ppo_fixtures import save_policy_folder, tokenizer
from test_grpo import grpo_config, reward_module, step_rows

from rlhfkit.cli import main as cli
from rlhfkit.config import ConfigError
from rlhfkit.envs import (
    Conversation,
    FixedSyntax,
    JsonSyntax,
    MalformedToolCall,
    Observation,
    ToolCall,
    ToolEnvironment,
    Turn,
    load_environment,
    tool,
)
from rlhfkit.envs.episodes import run_episodes
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rollout.experience import Rollout
from rlhfkit.trainers import critic_free
from rlhfkit.trainers.ppo_rollout import rollout_metrics


@tool
def add(expression: str) -> str:
    """Add the numbers of an expression like "17 plus 25".

    Args:
        expression: numbers joined by "plus"
    """
    return str(sum(int(part) for part in expression.split("plus")))


@tool(name="sum2")
def add_two(a: int, b: int = 0) -> str:
    """Add two integers.

    Args:
        a: the first
            number
        b: the second number
    """
    return str(a + b)


def environment(syntax=None, max_calls: int = 4) -> ToolEnvironment:
    return ToolEnvironment([add, add_two], syntax or FixedSyntax(), max_calls=max_calls)


def conversation(text: str) -> Conversation:
    return Conversation("p", [Turn("model", text)])


# ---------------------------------------------------------------------------------------------- tools, syntaxes


def test_tool_builds_the_json_schema_from_signature_hints_and_docstring():
    assert add_two.name == "sum2" and add_two.description == "Add two integers."
    assert add_two.parameters == {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer", "description": "the first number"},
        "b": {"type": "integer", "description": "the second number"}}}
    assert add_two.schema()["function"]["name"] == "sum2" and add_two(a=2, b=3) == "5"
    with pytest.raises(ValueError, match="must be integer"):
        add_two.check_arguments({"a": "2"})
    with pytest.raises(ValueError, match="needs a"):
        add_two.check_arguments({"b": 2})
    with pytest.raises(ValueError, match="no parameter c"):
        add_two.check_arguments({"a": 1, "c": 2})
    with pytest.raises(TypeError, match="kwargs"):
        tool(lambda **kw: "")


@pytest.mark.parametrize("text, expected", [
    ("add: 7 plus 5 =", ToolCall("add", {"expression": "7 plus 5"})),
    ("Let me see. add: 7 plus 5 =  ", ToolCall("add", {"expression": "7 plus 5"})),
    ("add:7 plus 5=", ToolCall("add", {"expression": "7 plus 5"})),
    ("7 plus 5 =", None),  # an equals sign in ordinary text is no call
    ("add: 7 plus 5 = 12", None),  # the call is not at the end: the model answered itself
    ("", None),
])
def test_fixed_syntax_parses_a_call_at_the_end_of_the_turn(text, expected):
    assert FixedSyntax().parse(text) == expected


def test_fixed_syntax_formats_and_refuses_an_empty_call():
    syntax = FixedSyntax()
    assert syntax.stop_strings == ("=",) and syntax.format_result("12") == " 12." and syntax.format_error("x") == " error."
    assert FixedSyntax(error_template=" error: {message}.").format_error("bad") == " error: bad."
    with pytest.raises(MalformedToolCall, match="no arguments"):
        syntax.parse("add: =")


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>{"name": "sum2", "arguments": {"a": 1, "b": 2}}</tool_call>', ToolCall("sum2", {"a": 1, "b": 2})),
    ('I will add. <tool_call>\n{"name": "sum2", "arguments": "{\\"a\\": 1}"}\n</tool_call>\n', ToolCall("sum2", {"a": 1})),
    ('<tool_call>{"name": "f"}</tool_call>', ToolCall("f", {})),
    ("no call at all", None),
    ('<tool_call>{"name": "f"}</tool_call> and then more text', None),
])
def test_json_syntax_parses_hermes_calls(text, expected):
    assert JsonSyntax().parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("<tool_call>{not json}</tool_call>", "not JSON"),
    ('<tool_call>["sum2"]</tool_call>', "must be"),
    ('<tool_call>{"name": "sum2", "arguments": [1]}</tool_call>', "not a JSON object"),
    ('<tool_call>{"name": "sum2"', "without"),
])
def test_json_syntax_raises_on_malformed_calls(text, message):
    with pytest.raises(MalformedToolCall, match=message):
        JsonSyntax().parse(text)


CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}<|im_end|>\n"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- elif m.tool_calls %}<|im_start|>assistant\n{{ m.content }}{%- for c in m.tool_calls %}"
    "<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}").replace("\n{%-", "\n{%")


def test_json_syntax_takes_the_result_wrapping_from_a_chat_template_with_tools(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(save_policy_folder(tmp_path))  # a copy: the template is set on it
    tok.chat_template = CHAT_TEMPLATE
    prompt = tok.apply_chat_template([{"role": "user", "content": "what is 2 plus 3?"}],
                                     tools=[add_two.schema()], tokenize=False, add_generation_prompt=True)
    assert '"name": "sum2"' in prompt and prompt.endswith("<|im_start|>assistant\n")  # the schema reached it
    syntax = JsonSyntax.from_chat_template(tok)
    assert syntax.format_result("5") == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response>"
                                         "<|im_end|>\n<|im_start|>assistant\n")
    assert "error: bad" in syntax.format_error("bad")
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(ValueError, match="does not write"):
        JsonSyntax.from_chat_template(tok)


# ---------------------------------------------------------------------------------------------- the environment


@pytest.mark.parametrize("text, observation, is_error", [
    ("add: 17 plus 25 =", " 42.", False),
    ("mul: 2 plus 3 =", " error.", True),  # unknown tool
    ("add: 1 over 0 =", " error.", True),  # the tool raises (int("1 over 0"))
    ("add: =", " error.", True),  # malformed
    ("sum2: 1 =", " error.", True),  # two parameters, one text
    ("17 plus 25 = 42.", None, False),  # no call
])
def test_tool_environment_answers_calls_and_turns_every_problem_into_an_error_observation(text, observation,
                                                                                          is_error):
    obs = environment().step(conversation(text))
    assert obs == observation
    if obs is not None:
        assert isinstance(obs, Observation) and obs.is_error == is_error


def test_tool_environment_json_errors_say_what_went_wrong_and_calls_are_capped():
    env = ToolEnvironment([add, add_two], JsonSyntax(), max_calls=1)
    ask = lambda text, turns=(): env.step(Conversation("p", [*turns, Turn("model", text)]))  # noqa: E731
    assert "unknown tool 'nope'" in ask('<tool_call>{"name": "nope"}</tool_call>')
    assert "must be integer" in ask('<tool_call>{"name": "sum2", "arguments": {"a": "x"}}</tool_call>')
    assert "not JSON" in ask("<tool_call>{</tool_call>")
    assert ask('<tool_call>{"name": "sum2", "arguments": {"a": 1, "b": 2}}</tool_call>') == (
        "\n<tool_response>\n3\n</tool_response>\n")
    earlier = [Turn("model", "x"), Turn("environment", "y")]
    capped = ask('<tool_call>{"name": "sum2", "arguments": {"a": 1}}</tool_call>', earlier)
    assert capped.is_error and "no more than 1 tool calls" in capped


def test_load_environment_resolves_paths_and_refuses_in_one_sentence(tmp_path):
    module = tmp_path / "my_env.py"
    module.write_text("from test_envs import environment\n\ndef factory():\n    return environment()\n\n"
                      "def broken():\n    return 3\n")
    assert isinstance(load_environment(f"{module}:factory"), ToolEnvironment)
    with pytest.raises(ConfigError, match="rollout.environment .* no function 'nothing'"):
        load_environment(f"{module}:nothing")
    with pytest.raises(ConfigError, match="not an environment with a step"):
        load_environment(f"{module}:broken")


# ---------------------------------------------------------------------------------------------- episodes


@contextlib.contextmanager
def scripted(model, prompt_length: int, script: list[int]):
    """The model writes ``script`` after a prompt of ``prompt_length`` tokens whatever it reads: the logits of the
    position holding response token j − 1 are forced to response token j (by position id, so the environment's
    tokens, which the model reads but does not write, take their own places in the script)."""

    def hook(module, args, kwargs, output):
        positions = kwargs["position_ids"][:, -1]
        index = (positions - (prompt_length - 1)).clamp(0, len(script) - 1)
        forced = torch.zeros_like(output.logits[:, -1, :])  # the scripted token at e^8 : 1, a log-prob below 0
        forced.scatter_(1, torch.tensor(script)[index].unsqueeze(1), 8.0)
        output.logits[:, -1, :] = forced
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def encode(text: str) -> list[int]:
    return tokenizer().encode(text, add_special_tokens=False)


PROMPT = "what is 17 plus 25?"


def episodes(tmp_path, script_text: list[tuple[str, str]], env=None, rows: int = 2, **settings):
    """Run ``rows`` episodes of the scripted micro model; ``script_text`` is the expected response as
    (kind, text) pieces, kind "model" or "env". Returns the output and the expected ids and env mask."""
    tok = tokenizer()
    model = load_causal_lm(save_policy_folder(tmp_path), "float32")
    prompt = [tok.bos_token_id or 1] + encode(PROMPT) if tok.bos_token_id is not None else encode(PROMPT)
    ids, env_flags = [], []
    for kind, text in script_text:
        piece = [tok.eos_token_id] if text == "<eos>" else encode(text)
        ids += piece
        env_flags += [int(kind == "env")] * len(piece)
    options = {"max_new_tokens": 64, "max_turns": 4, **settings}
    with scripted(model, len(prompt), ids):
        out = run_episodes(model, tok, [prompt] * rows, env or environment(), greedy=True,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **options)
    return out, ids, env_flags


def test_an_episode_interleaves_model_and_environment_tokens_with_the_right_masks(tmp_path):
    script = [("model", "add: 17 plus 25 ="), ("env", " 42."), ("model", " the answer is 42."), ("model", "<eos>")]
    out, ids, env_flags = episodes(tmp_path, script)
    for i in range(2):
        assert out.response_ids[i].tolist() == ids  # the observation's tokens exactly where they belong
        assert out.env_mask[i].tolist() == env_flags and sum(env_flags) == len(encode(" 42."))
        assert out.response_mask[i].tolist() == [1] * len(ids)  # environment tokens and EOS are context
        assert out.action_mask[i].tolist() == [1 - e for e in env_flags]
        env = out.env_mask[i].bool()
        assert (out.logprobs[i][env] == 0).all() and (out.logprobs[i][~env] < 0).all()
    assert out.turns.tolist() == [2, 2] and out.tool_calls.tolist() == [1, 1] and out.tool_errors.tolist() == [0, 0]
    assert out.ended_with_eos.all()
    turns = out.conversations[0].turns
    assert [(t.role, t.text) for t in turns] == [("model", "add: 17 plus 25 ="), ("environment", " 42."),
                                                 ("model", " the answer is 42.")]
    rollout = Rollout.from_generation(out).validate()
    assert torch.equal(rollout.env_mask, out.env_mask) and torch.equal(rollout.action_mask, out.action_mask)


def test_a_tool_error_is_an_observation_and_the_episode_goes_on(tmp_path):
    script = [("model", "mul: 2 plus 3 ="), ("env", " error."), ("model", "add: 1 over 0 ="), ("env", " error."),
              ("model", "add: 2 plus 3 ="), ("env", " 5."), ("model", " so 5."), ("model", "<eos>")]
    out, ids, env_flags = episodes(tmp_path, script)
    assert out.response_ids[0].tolist() == ids and out.env_mask[0].tolist() == env_flags
    assert out.turns.tolist() == [4, 4] and out.tool_calls.tolist() == [3, 3] and out.tool_errors.tolist() == [2, 2]


def test_text_that_is_not_a_call_resumes_the_turn(tmp_path):
    script = [("model", "17 plus 25 = 42."), ("model", "<eos>")]
    out, ids, _ = episodes(tmp_path, script)
    assert out.response_ids[0].tolist() == ids and not out.env_mask.any()
    assert out.turns.tolist() == [1, 1] and out.tool_calls.tolist() == [0, 0]
    assert [t.text for t in out.conversations[0].turns] == ["17 plus 25 = 42."]


def test_json_calls_pause_at_a_stop_string_spread_over_many_tokens(tmp_path):
    env = ToolEnvironment([add, add_two], JsonSyntax())
    call = '<tool_call>{"name": "sum2", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert len(encode("</tool_call>")) > 5  # the stop string is many BPE pieces
    script = [("model", call), ("env", "\n<tool_response>\n3\n</tool_response>\n"), ("model", " so 3."),
              ("model", "<eos>")]
    out, ids, env_flags = episodes(tmp_path, script, env=env, max_new_tokens=96)
    assert out.response_ids[0].tolist() == ids and out.env_mask[0].tolist() == env_flags
    assert out.tool_calls.tolist() == [1, 1] and out.tool_errors.tolist() == [0, 0]


def test_the_stop_check_fires_at_the_token_that_completes_a_stop_string():
    from rlhfkit.envs.episodes import _StopStrings

    tok = tokenizer()
    stop = _StopStrings(tok, ["</tool_call>", "="])
    ids = encode('I add <tool_call>{"a": 1}</tool_call> then 7 plus 5 = 12')
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        completed = "</tool_call>" in text and "</tool_call>" not in tok.decode(ids[: n - 1]) or (
            "=" in text and "=" not in tok.decode(ids[: n - 1]))
        if completed:  # the first time a stop string shows: seen through the tail window too
            assert stop(ids[:n]), n
    assert not stop(encode("no stop here"))


def test_budgets_end_episodes_on_a_model_token(tmp_path):
    script = [("model", "add: 17 plus 25 ="), ("env", " 42."), ("model", " the answer is 42."), ("model", "<eos>")]
    call = len(encode("add: 17 plus 25 ="))
    # max_turns=1: the call is not answered
    out, ids, _ = episodes(tmp_path, script, max_turns=1)
    assert out.response_ids[0].tolist() == ids[:call] and not out.env_mask.any() and out.tool_calls.tolist() == [0, 0]
    # … but an equals sign that is no call, in the last turn, does not cut the answer
    out, ids, _ = episodes(tmp_path, [("model", "17 plus 25 = 42."), ("model", "<eos>")], max_turns=1)
    assert out.response_ids[0].tolist() == ids and out.ended_with_eos.all()
    # the model-token budget: environment tokens do not count
    obs = len(encode(" 42."))
    out, ids, env_flags = episodes(tmp_path, script, max_new_tokens=call + 3)
    assert out.response_ids[0].tolist() == ids[: call + obs + 3] and out.action_mask[0].sum() == call + 3
    assert not out.ended_with_eos.any() and out.env_mask[0, -1] == 0
    # the budget exhausted exactly at the call: no observation nobody would read
    out, _, _ = episodes(tmp_path, script, max_new_tokens=call)
    assert out.response_ids.shape[1] == call and not out.env_mask.any()


# ---------------------------------------------------------------------------------------------- zero gradient, zero KL


def _compact(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each row's entries where ``keep``, left-aligned and zero-padded: the batch without environment tokens."""
    out = torch.zeros_like(t)
    for i in range(t.shape[0]):
        row = t[i][keep[i]]
        out[i, : row.numel()] = row
    return out


def _episode_rollout(tmp_path):
    """Two episodes (one with an observation, one without), the policy's logits and log-probs with gradient."""
    with_call = [("model", "add: 17 plus 25 ="), ("env", " 42."), ("model", " the answer is 42."), ("model", "<eos>")]
    first, _, _ = episodes(tmp_path, with_call, rows=1)
    second, _, _ = episodes(tmp_path, [("model", " the answer is 42."), ("model", "<eos>")], rows=1)
    rollout = Rollout.cat([Rollout.from_generation(first), Rollout.from_generation(second)])
    model = load_causal_lm(save_policy_folder(tmp_path), "float32")
    ids, mask = rollout.sequences()
    logits = model(input_ids=ids, attention_mask=mask).logits  # (B, P + T, V)
    logits.retain_grad()
    prompt_len = rollout.query_ids.shape[1]
    logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1].float(), dim=-1).gather(
        -1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    g = torch.Generator().manual_seed(0)
    noise = lambda: 0.3 * torch.rand(rollout.response_ids.shape, generator=g)  # noqa: E731
    rollout = rollout.replace(logprobs=(logprobs.detach() - noise()).clamp(max=0),
                              ref_logprobs=(logprobs.detach() - noise()).clamp(max=0),
                              scores=torch.tensor([1.0, -0.5]))
    return rollout, logits, logprobs


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_environment_tokens_get_zero_gradient_and_zero_kl(tmp_path, aggregation):
    cfg = grpo_config(tmp_path, "kl.penalty=loss", "kl.init_coef=0.1", "advantage.estimator=reinforce_pp",
                      "rollout.n=1", f"advantage.loss_aggregation={aggregation}")
    rollout, logits, logprobs = _episode_rollout(tmp_path)
    env = rollout.env_mask.bool()
    assert env[0].any() and not env[1].any()
    advantages, shaped = critic_free.advantages_and_rewards(rollout, cfg, 0.1)
    rollout = rollout.replace(advantages=advantages, kl=shaped.kl, rewards=shaped.rewards).validate()
    loss, stats = critic_free.policy_loss_sum(logprobs, rollout, cfg, beta=0.1)
    loss.backward()
    prompt_len = rollout.query_ids.shape[1]
    grad = logits.grad[:, prompt_len - 1 : -1]  # (B, T, V): the logits each response token is read from
    assert (grad[env] == 0).all()  # exactly zero, not small
    assert (grad[rollout.action_mask.bool()].abs().sum(dim=-1) > 0).all()
    # the KL (loss term, reward and metric) does not read the reference at environment tokens
    moved = rollout.replace(ref_logprobs=torch.where(env, torch.full_like(rollout.ref_logprobs, -9.0),
                                                     rollout.ref_logprobs))
    loss2, stats2 = critic_free.policy_loss_sum(logprobs.detach(), moved, cfg, beta=0.1)
    assert float(loss2) == float(loss) and float(stats2["ppo/policy/kl_loss"]) == float(stats["ppo/policy/kl_loss"])
    _, shaped2 = critic_free.advantages_and_rewards(moved, cfg, 0.1)
    assert torch.equal(shaped2.kl, shaped.kl) and (shaped.kl[env] == 0).all() and (shaped.rewards[env] == 0).all()
    extras = {"rm_scores": rollout.scores, "entropy": torch.ones(2), "ended_with_eos": torch.ones(2, dtype=torch.bool)}
    assert rollout_metrics(moved, extras, 0.1)["objective/kl"] == rollout_metrics(rollout, extras, 0.1)["objective/kl"]
    # an independent computation: the same batch with the environment tokens cut out, a plain single-turn rollout
    keep = rollout.action_mask.bool()
    lengths = keep.sum(dim=1)
    compact = Rollout(rollout.query_ids, rollout.query_mask, _compact(rollout.response_ids, keep),
                      (torch.arange(keep.shape[1])[None] < lengths[:, None]).long(),
                      logprobs=_compact(rollout.logprobs, keep), ref_logprobs=_compact(rollout.ref_logprobs, keep),
                      scores=rollout.scores)
    c_advantages, c_shaped = critic_free.advantages_and_rewards(compact, cfg, 0.1)
    for i in range(2):
        assert torch.allclose(c_advantages[i, : lengths[i]], advantages[i][keep[i]], atol=1e-6)
        assert torch.allclose(c_shaped.rewards[i, : lengths[i]], shaped.rewards[i][keep[i]])
    compact = compact.replace(advantages=c_advantages)
    c_loss, _ = critic_free.policy_loss_sum(_compact(logprobs.detach(), keep), compact, cfg, beta=0.1)
    assert float(c_loss) == pytest.approx(float(loss), rel=1e-6)


def test_rollout_validation_checks_the_env_mask():
    rollout = Rollout(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                      torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]), logprobs=torch.zeros(1, 3),
                      env_mask=torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match="outside response_mask"):
        rollout.validate()
    with pytest.raises(ValueError, match="no model token"):
        rollout.replace(env_mask=torch.tensor([[1, 1, 0]])).validate()
    assert rollout.replace(env_mask=torch.tensor([[1, 0, 0]])).validate().action_mask.tolist() == [[0, 1, 0]]


# ---------------------------------------------------------------------------------------------- training


ENV_MODULE = '''
from rlhfkit.envs import Observation


class Echo:
    """Pauses the model at every space and answers with a fixed observation; each episode's second one is an
    error. Stateless (a function of the conversation), so a resumed run meets the same answers."""

    stop_strings = (" ",)

    def step(self, conversation):
        return Observation(" ok", is_error=conversation.calls == 1)


class Chatty(Echo):
    """Pauses at nearly anything a random micro model writes: every episode meets the environment."""

    stop_strings = tuple("abcdefghijklmnopqrstuvwxyz0123456789 ")


def environment():
    return Echo()


def chatty():
    return Chatty()
'''


def test_grpo_with_an_environment_trains_through_the_cli_and_logs_tool_metrics(tmp_path):
    module = tmp_path / "toy_env.py"
    module.write_text(ENV_MODULE)
    cfg_args = [f"rollout.environment={module}:environment", "rollout.max_turns=3", "rollout.max_new_tokens=10",
                "train.max_steps=2", "rollout.print_samples=1"]
    cfg = grpo_config(tmp_path, *cfg_args)  # writes the prompts, rewards and policy the CLI run reads
    out = tmp_path / "run"
    args = [f"model.path={cfg.model.path}", f"data.train_file={cfg.data.train_file}", f"train.output_dir={out}",
            f'rewards=[{{name: letter, function: "{cfg.rewards[0].function}"}}]', "advantage.estimator=grpo",
            "rollout.n=4", "train.per_device_batch_size=4", "ppo.minibatch_size=8", "train.progress_bar=false",
            "data.max_prompt_length=32", "data.max_length=64", *cfg_args]
    assert cli(["grpo", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "grpo.yaml"), *args]) == 0
    rows = step_rows(out)
    assert len(rows) == 2 and (out / "final" / "config.json").exists()
    for row in rows:
        assert row["tools/calls_per_episode"] > 0 and row["episode/turns"] == pytest.approx(
            1 + row["tools/calls_per_episode"])
        assert 0 <= row["tools/errors_per_episode"] <= row["tools/calls_per_episode"]


def test_gae_with_gaps_is_gae_over_the_model_tokens_alone():
    """An independent computation: GAE on the batch with the holes cut out (a plain right-padded batch)."""
    from rlhfkit.losses import gae

    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    rewards, values = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    advantages, returns = gae(rewards, values, mask, 0.9, 0.8, gaps=True)
    keep = mask.bool()
    lengths = keep.sum(dim=1)
    right = (torch.arange(7)[None] < lengths[:, None]).long()
    c_advantages, c_returns = gae(_compact(rewards, keep), _compact(values, keep), right, 0.9, 0.8)
    for i in range(3):
        assert torch.allclose(advantages[i][keep[i]], c_advantages[i, : lengths[i]], atol=1e-6)
        assert torch.allclose(returns[i][keep[i]], c_returns[i, : lengths[i]], atol=1e-6)
    assert (advantages[~keep] == 0).all() and (returns[~keep] == 0).all()
    # a right-padded mask: the same numbers with and without gaps=True
    plain = gae(rewards, values, right, 0.9, 0.8)
    assert all(torch.equal(a, b) for a, b in zip(plain, gae(rewards, values, right, 0.9, 0.8, gaps=True)))


@pytest.mark.parametrize("value_kind", ["head", "separate", "none"])
def test_a_ppo_step_on_episodes_learns_from_the_model_tokens_only(tmp_path, value_kind):
    """PPO with a value head or model (old log-probs from sampling), and GRPO with old log-probs from a forward."""
    from ppo_fixtures import FakeLoop, ppo_config

    from rlhfkit.trainers.critic_free import build_online_models
    from rlhfkit.trainers.ppo import PPOTrainer, SamplingRNG, load_prompts, make_kl_controller

    module = tmp_path / "toy_env.py"
    module.write_text(ENV_MODULE)
    extra = {"head": ["value_model.kind=head"], "separate": [],
             "none": ["reward_model.path=", "advantage.estimator=grpo", "rollout.n=2", "rollout.old_logprobs=forward",
                      "ppo.epochs=2", f'rewards=[{{function: "{reward_module(tmp_path)}:length"}}]']}[value_kind]
    cfg = ppo_config(tmp_path, f"rollout.environment={module}:chatty", "rollout.max_turns=3",
                     "rollout.max_new_tokens=10", "rollout.old_logprobs=sampling", *extra)
    models = build_online_models(cfg)
    loop = FakeLoop(models.actor_critic, lr=1e-3)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer, environment=models.environment)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None, ([], []))
    batch = encoded[:8] if value_kind != "none" else encoded[:4]  # GRPO: 4 prompts × n = 2
    metrics = trainer.step(batch, 1)
    rollout = trainer.last_rollout
    env = rollout.env_mask.bool()
    assert env.any() and metrics["tools/calls_per_episode"] > 0
    assert loop.updates == (4 if value_kind == "none" else 8)  # ppo.epochs × 8 rows / minibatch 4
    assert (rollout.advantages[env] == 0).all() and (rollout.kl[env] == 0).all() and (rollout.rewards[env] == 0).all()
    if value_kind == "none":
        assert rollout.values is None and (rollout.advantages[rollout.action_mask.bool()] != 0).any()
        return
    assert (rollout.returns[env] == 0).all() and torch.isfinite(torch.tensor(metrics["ppo/val/loss"]))
    with pytest.raises(ConfigError, match="module:factory"):
        grpo_config(tmp_path, "rollout.environment=nocolon")


def test_eval_runs_episodes_and_judges_their_whole_text(tmp_path, capsys):
    from test_evaluate_common import saved_policy

    module = tmp_path / "toy_env.py"
    module.write_text(ENV_MODULE)
    out, pairs = tmp_path / "eval.json", tmp_path / "pairs.jsonl"
    code = cli(["eval", "--policy", str(saved_policy(tmp_path, 0)), "--baseline", str(saved_policy(tmp_path, 1)),
                "--judge", "gold", "--limit", "1", "--samples", "2", "--max-new-tokens", "10", "--n-bootstrap",
                "50", "--batch-size", "4", "--environment", f"{module}:environment", "--max-turns", "3",
                "--out", str(out), "--save-samples", str(pairs)])
    assert code == 0 and "episodes in" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["settings"]["environment"] == f"{module}:environment" and report["settings"]["max_turns"] == 3
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) == 10 and any(" ok" in r["a"] for r in rows) and any(" ok" in r["b"] for r in rows)
    assert report["metrics"]["kl/nats_per_seq"] is not None
    assert cli(["eval", "--policy", "x", "--baseline", "y", "--environment", "nocolon"]) == 2
    assert "--environment 'nocolon' must be written module:factory or path.py:factory" in capsys.readouterr().err
