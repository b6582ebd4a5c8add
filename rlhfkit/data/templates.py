"""Chat templates: turn a prompt (and a response) into the exact text the model reads.

The template is, in order of preference: the one passed explicitly (a Jinja string, or ``"raw"`` for
none at all: a string prompt is used verbatim and the response appended directly, as for a base model
trained on plain continuations); the tokenizer's own ``chat_template``; else :data:`DEFAULT_CHAT_TEMPLATE`
(documented in ``docs/data-formats.md``). A string prompt is one user message; a string response is
one assistant message.

``tools`` (OpenAI-function schemas, e.g. an environment's ``schemas()``, docs/tools.md) go to
``apply_chat_template(..., tools=...)``, where a template that knows them (Qwen, Hermes) lists them in its
system turn; one that does not reference ``tools`` renders the same text. A ``"raw"`` prompt is the user's
own text, so tools are never injected into it: write the tool list into a raw prompt yourself.

Every template must render the prompt (with the generation prompt) as a prefix of the whole
conversation, so that the response text is exactly what follows the prompt — :func:`split_conversation`
checks it and fails with a clear message otherwise.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.data.rows import Message, Prompt, Response
from rlhfkit.errors import UserError

RAW = "raw"

Tools = list[dict] | None  # OpenAI-function schemas for apply_chat_template's tools=, or None for no tools

# Used when the tokenizer has no chat template (GPT-2 and most base models). Plain text a base model
# can read. The generation prompt is "Assistant:" without a trailing space: the space starts the
# response (" Paris"), which is how byte-level BPE tokenizers attach it to the first word, so the
# prompt's tokens are the same alone as in front of the response. Each assistant turn ends with EOS.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') }}"
    "{% if not loop.last %}{{ '\n\n' }}{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class TemplateError(UserError):
    """The chat template cannot render this prompt/response with an exact boundary."""


def resolve_template(tokenizer: Any, template: str | None = None) -> str | None:
    """The Jinja template that will be used, or None for ``"raw"`` (no template)."""
    if template == RAW:
        return None
    if template:
        return template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # named templates: transformers picks "default"
        own = own.get("default") or next(iter(own.values()), None)
    return own or DEFAULT_CHAT_TEMPLATE


def to_messages(value: Prompt | Response, role_of_text: str) -> list[dict[str, str]]:
    """Messages as the dicts templates expect; a string becomes one message of ``role_of_text``."""
    if isinstance(value, str):
        return [{"role": role_of_text, "content": value}]
    return [{"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m) for m in value]


def _apply(
    tokenizer: Any, messages: list[dict[str, str]], template: str, generation_prompt: bool, tools: Tools = None
) -> str:
    # tools= only when given: a call without tools reaches apply_chat_template exactly as it always did
    extra = {} if tools is None else {"tools": tools}
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )
    if not isinstance(text, str):  # some versions return a list for batched input
        raise TemplateError(f"apply_chat_template returned {type(text).__name__}, expected text")
    return text


def _raw_text(value: Prompt | Response, field: str) -> str:
    if not isinstance(value, str):
        raise TemplateError(
            f'template="raw" needs a string {field}, got a list of messages; use a chat template'
        )
    return value


def render_prompt(tokenizer: Any, prompt: Prompt, *, template: str | None = None, tools: Tools = None) -> str:
    """The prompt as the model reads it, ending with the generation prompt (e.g. ``<|assistant|>``).

    ``tools``: schemas the template may list (see the module docstring); ignored by ``"raw"``."""
    jinja = resolve_template(tokenizer, template)
    if jinja is None:
        return _raw_text(prompt, "prompt")
    return _apply(tokenizer, to_messages(prompt, "user"), jinja, generation_prompt=True, tools=tools)


def render_conversation(
    tokenizer: Any, prompt: Prompt, response: Response, *, template: str | None = None, tools: Tools = None
) -> str:
    """Prompt followed by the response, as the template renders the whole conversation (``tools`` as in
    :func:`render_prompt`)."""
    jinja = resolve_template(tokenizer, template)
    if jinja is None:
        return _raw_text(prompt, "prompt") + _raw_text(response, "response")
    messages = to_messages(prompt, "user") + to_messages(response, "assistant")
    return _apply(tokenizer, messages, jinja, generation_prompt=False, tools=tools)


def split_conversation(
    tokenizer: Any, prompt: Prompt, response: Response, *, template: str | None = None, tools: Tools = None
) -> tuple[str, str]:
    """``(prompt_text, response_text)`` with ``prompt_text + response_text`` the rendered conversation.

    ``prompt_text`` is :func:`render_prompt`; ``response_text`` is what follows it — the text the model
    must generate, ending with the EOS the template emits (if any). Whitespace the template writes
    after the final EOS (ChatML's ``"<|im_end|>\\n"``) is cut: the model stops at EOS. ``tools`` are rendered
    into both (:func:`render_prompt`), so the prompt stays a prefix of the conversation.
    """
    prompt_text = render_prompt(tokenizer, prompt, template=template, tools=tools)
    full = render_conversation(tokenizer, prompt, response, template=template, tools=tools)
    if not full.startswith(prompt_text):
        raise TemplateError(
            "the chat template does not render the prompt as a prefix of the conversation "
            f"(prompt ends {prompt_text[-60:]!r}, conversation has {full[len(prompt_text) - 60 : len(prompt_text)]!r} "
            'there), so the response boundary is ambiguous; pass another template (a Jinja string) or "raw"'
        )
    response_text = full[len(prompt_text) :]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos in response_text:
        end = response_text.rindex(eos) + len(eos)
        if not response_text[end:].strip():
            response_text = response_text[:end]
    return prompt_text, response_text


def adopt_template(tokenizer: Any, template: str | None = None) -> Any:
    """Give ``tokenizer`` the chat template a stage trains with, so the tokenizer saved beside the model
    carries it and ``apply_chat_template`` on the result renders what the model was trained on.

    The explicit ``template`` (a Jinja string) replaces the tokenizer's own; a tokenizer without one gets
    :data:`DEFAULT_CHAT_TEMPLATE`; ``"raw"`` and a tokenizer's own template leave it as it is. Returns it.
    """
    if template == RAW or (not template and getattr(tokenizer, "chat_template", None)):
        return tokenizer
    tokenizer.chat_template = resolve_template(tokenizer, template)
    return tokenizer
