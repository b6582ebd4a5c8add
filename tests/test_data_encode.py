"""Tokenization keeps the exact prompt/response boundary on four tokenizer families."""

from __future__ import annotations

import pytest
from data_fixtures import STYLES, metaspace_tokenizer, tiny_tokenizer

from rlhfkit.data.encode import (
    IGNORE_INDEX,
    encode_groups,
    encode_pair,
    encode_preference,
    encode_prompt,
    encode_sft,
    format_encode_report,
    special_prefix_ids,
)
from rlhfkit.data.formats import DataValidationError, Message, PreferenceRow, PromptRow, SFTRow
from rlhfkit.data.rankings import ComparisonGroup
from rlhfkit.data.templates import (
    DEFAULT_CHAT_TEMPLATE,
    TemplateError,
    render_conversation,
    render_prompt,
    split_conversation,
)

SYSTEM, USER, ASSISTANT = (
    Message("system", "be nice"),
    Message("user", "what is one plus two"),
    Message("assistant", "three"),
)
SFT_ROWS = [
    SFTRow("hello cat", "the cat sat on the mat", "s line 1"),
    SFTRow([SYSTEM, USER, ASSISTANT, Message("user", "and two plus two")], "no idea 4", "s line 2"),
    SFTRow("x\n", "\nsay hello world", "s line 3"),  # whitespace on both sides of the boundary
]


@pytest.fixture(params=STYLES)
def tok(request):
    return tiny_tokenizer(request.param)


def messages_of(prompt, response=None):
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [vars(m) for m in prompt]
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def reference_texts(tok, row):
    """Prompt and conversation text straight from transformers' apply_chat_template (not our code)."""
    template = tok.chat_template or DEFAULT_CHAT_TEMPLATE
    prompt = tok.apply_chat_template(
        messages_of(row.prompt), chat_template=template, tokenize=False, add_generation_prompt=True
    )
    full = tok.apply_chat_template(
        messages_of(row.prompt, row.response), chat_template=template, tokenize=False
    )
    full = full[: full.rindex(tok.eos_token) + len(tok.eos_token)]  # the model stops at EOS
    return prompt, full


def test_boundary_is_exact_and_labels_mask_the_prompt(tok):
    encoded, report = encode_sft(tok, SFT_ROWS)
    assert report.n_rows == 3 and report.n_dropped == 0 and report.n_boundary_fallback == 0
    for example, row in zip(encoded, SFT_ROWS):
        prompt_text, full_text = reference_texts(tok, row)
        assert tok.decode(example.prompt_ids) == prompt_text
        assert tok.decode(example.prompt_ids) + tok.decode(example.response_ids) == full_text
        assert example.input_ids == example.prompt_ids + example.response_ids
        n_prompt = len(example.prompt_ids)
        assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert example.labels[n_prompt:] == example.response_ids and IGNORE_INDEX not in example.response_ids


def test_response_ids_are_what_follows_the_prompt_in_one_tokenization(tok):
    for example, row in zip(encode_sft(tok, SFT_ROWS)[0], SFT_ROWS):
        _, full_text = reference_texts(tok, row)
        joint = tok(full_text, add_special_tokens=False)["input_ids"]
        if tok.bos_token == "<s>":  # llama: the template's own BOS is the one
            assert joint[0] == tok.bos_token_id
        assert example.input_ids == joint


def test_exactly_one_bos_for_llama_and_none_for_the_others(tok):
    naive = tok(reference_texts(tok, SFT_ROWS[0])[0])["input_ids"]  # what a careless pipeline does
    for example in encode_sft(tok, SFT_ROWS)[0]:
        ids = example.input_ids
        if tok.bos_token == "<s>":
            assert naive[:2] == [tok.bos_token_id] * 2  # the trap is real for this tokenizer
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        elif tok.bos_token_id is not None:  # gpt2: BOS is EOS; it must not open the sequence
            assert ids[0] != tok.bos_token_id
        else:
            assert special_prefix_ids(tok) == []


def test_exactly_one_eos_ending_each_response(tok):
    encoded, _ = encode_sft(tok, SFT_ROWS)
    for example in encoded:
        assert example.response_ids[-1] == tok.eos_token_id
        assert example.response_ids.count(tok.eos_token_id) == 1


def test_raw_template_appends_eos_and_never_doubles_it(tok):
    rows = [SFTRow("one two", " three", "r 1"), SFTRow("one two", " three" + tok.eos_token, "r 2")]
    encoded, _ = encode_sft(tok, rows, template="raw")
    for example in encoded:
        assert tok.decode(example.response_ids) == " three" + tok.eos_token
        assert example.response_ids.count(tok.eos_token_id) == 1
        assert example.prompt_ids[: len(special_prefix_ids(tok))] == special_prefix_ids(tok)
        # the tokenizer's own BOS (llama) is added exactly once even though the raw text has none
        assert example.prompt_ids == tok("one two")["input_ids"]


def test_a_merge_across_the_boundary_falls_back_and_is_counted():
    tok = tiny_tokenizer("gpt2")
    # "ca" + "t sat": joint tokenization merges "cat", so the prompt's ids are no prefix of the joint ids
    encoded, report = encode_sft(tok, [SFTRow("the ca", "t sat", "m 1")], template="raw")
    assert report.n_boundary_fallback == 1
    assert "1 responses tokenized apart from their prompt" in format_encode_report(report)
    (example,) = encoded
    assert example.prompt_ids == tok("the ca")["input_ids"]
    assert tok.decode(example.prompt_ids) + tok.decode(example.response_ids) == "the cat sat" + tok.eos_token


def test_preference_with_message_lists(tok):
    row = PreferenceRow([SYSTEM, USER], [Message("assistant", "three")], "four hello", "p line 1")
    (example,), report = encode_preference(tok, [row])
    assert report.n_kept == 1
    for response_ids, text in ((example.chosen_ids, "three"), (example.rejected_ids, "four hello")):
        _, full = reference_texts(tok, SFTRow(row.prompt, text))
        assert tok.decode(example.prompt_ids) + tok.decode(response_ids) == full
        assert response_ids.count(tok.eos_token_id) == 1 and response_ids[-1] == tok.eos_token_id


def test_multi_turn_response_keeps_each_assistant_eos(tok):
    response = [Message("assistant", "yes"), Message("user", "sure"), Message("assistant", "no")]
    prompt_ids, response_ids = encode_pair(tok, "hello", response)
    template = tok.chat_template or DEFAULT_CHAT_TEMPLATE
    full = tok.apply_chat_template(
        messages_of("hello") + [vars(m) for m in response], chat_template=template, tokenize=False
    )
    full = full[: full.rindex(tok.eos_token) + len(tok.eos_token)]
    assert tok.decode(prompt_ids) + tok.decode(response_ids) == full
    # one EOS per assistant turn (ChatML also ends the user turn with it), none doubled, one at the end
    assert response_ids.count(tok.eos_token_id) == full.count(tok.eos_token) - tok.decode(prompt_ids).count(
        tok.eos_token
    )
    assert response_ids.count(tok.eos_token_id) >= 2 and response_ids[-1] == tok.eos_token_id


LONG_PROMPT = " ".join(f"w{i}" for i in range(60))
LONG_RESPONSE = " ".join(f"r{i}" for i in range(60))


def test_truncation_keeps_end_of_prompt_and_start_of_response(tok):
    row = SFTRow(LONG_PROMPT, LONG_RESPONSE, "t line 1")
    (full,), _ = encode_sft(tok, [row])
    (cut,), report = encode_sft(tok, [row], max_prompt_length=20, max_length=50)
    prefix = special_prefix_ids(tok)
    assert len(cut.prompt_ids) == 20 and len(cut) == 50
    assert cut.prompt_ids == prefix + full.prompt_ids[len(full.prompt_ids) - 20 + len(prefix) :]
    assert tok.decode(cut.prompt_ids).endswith(render_prompt(tok, "w59")[-12:])  # still ends like a prompt
    assert cut.response_ids == full.response_ids[:30] and tok.eos_token_id not in cut.response_ids
    assert (report.n_truncated_prompt, report.n_truncated_response, report.n_dropped) == (1, 1, 0)
    line = format_encode_report(report, "sft")
    assert "1 prompts truncated (kept the end, max_prompt_length=20)" in line
    assert "1 responses truncated (kept the start, max_length=50)" in line


def test_rows_without_room_for_a_response_are_dropped_and_named(tok):
    rows = [SFTRow(LONG_PROMPT, "hello", "t line 1"), SFTRow("hi", "hello", "t line 2")]
    encoded, report = encode_sft(tok, rows, max_length=30)
    assert [e.origin for e in encoded] == ["t line 2"] and encoded[0].index == 1
    assert report.n_dropped == 1 and report.n_kept == 1
    assert report.dropped[0].startswith("t line 1: the prompt's") and "max_length=30" in report.dropped[0]
    assert "1 dropped (first: t line 1" in format_encode_report(report)
    with pytest.raises(DataValidationError, match="all 1 sft rows were dropped"):
        encode_sft(tok, rows[:1], max_length=30)


def test_length_settings_are_checked_up_front(tok):
    with pytest.raises(ValueError, match="must be smaller than max_length"):
        encode_sft(tok, SFT_ROWS, max_length=64, max_prompt_length=64)


def test_pair_identical_after_truncation_is_dropped(tok):
    same_start = " ".join(["hello world"] * 20)
    rows = [
        PreferenceRow("hi", same_start + " yes", same_start + " no", "p line 1"),
        PreferenceRow("hi", "yes", "no", "p line 2"),
    ]
    encoded, report = encode_preference(tok, rows, max_length=25)
    assert [e.origin for e in encoded] == ["p line 2"]
    assert report.n_dropped == 1 and "identical after truncation" in report.dropped[0]
    assert len(encode_preference(tok, rows)[0]) == 2  # without truncation both are kept


def test_prompts_end_with_the_generation_prompt_and_truncate_left(tok):
    rows = [PromptRow("hello cat", "q 1"), PromptRow(LONG_PROMPT, "q 2")]
    (short, full), _ = encode_prompt(tok, rows)
    limit = len(short.prompt_ids) + 2
    assert len(full.prompt_ids) > limit
    encoded, report = encode_prompt(tok, rows, max_prompt_length=limit)
    assert tok.decode(encoded[0].prompt_ids) == render_prompt(tok, "hello cat")
    assert len(encoded[1].prompt_ids) == limit and report.n_truncated_prompt == 1
    n_prefix = len(special_prefix_ids(tok))
    assert encoded[1].prompt_ids[:n_prefix] == full.prompt_ids[:n_prefix]
    assert encoded[1].prompt_ids[n_prefix:] == full.prompt_ids[len(full.prompt_ids) - limit + n_prefix :]


def test_groups_keep_their_pairs_and_share_the_prompt(tok):
    group = ComparisonGroup("hi", ["yes", "no", "hello world"], [(2, 0), (2, 1), (0, 1)], "r line 1")
    (example,), report = encode_groups(tok, [group])
    assert example.pairs == [(2, 0), (2, 1), (0, 1)] and report.n_kept == 1
    for ids, text in zip(example.response_ids, group.responses):
        assert (example.prompt_ids, ids) == encode_pair(tok, "hi", text)


def test_a_template_without_a_prefix_boundary_is_refused_naming_the_row(tok):
    odd = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'NEXT:' }}{% endif %}"
    )
    with pytest.raises(
        TemplateError, match="^s line 1: the chat template does not render the prompt as a prefix"
    ):
        encode_sft(tok, SFT_ROWS[:1], template=odd)


def test_sentencepiece_style_response_ids_are_the_ones_seen_after_the_prompt():
    tok = metaspace_tokenizer()
    row = SFTRow("hello cat", "the cat sat", "m line 1")
    (example,), report = encode_sft(tok, [row])
    _, full_text = reference_texts(tok, row)
    assert example.input_ids == tok(full_text, add_special_tokens=False)["input_ids"]
    alone = tok("the cat sat", add_special_tokens=False)["input_ids"]
    assert example.response_ids[: len(alone)] != alone  # alone, "the" would be "▁the": other ids
    assert report.n_boundary_fallback == 0 and example.response_ids[-1] == tok.eos_token_id


def test_a_bos_already_in_the_text_is_kept_once():
    tok = tiny_tokenizer("llama")
    rows = [SFTRow("<s>one two", " three", "b 1"), SFTRow("<s><s>one two", " three", "b 2")]
    for example in encode_sft(tok, rows, template="raw")[0]:
        assert example.prompt_ids == tok("one two")["input_ids"]
        assert example.input_ids.count(tok.bos_token_id) == 1


def test_split_conversation_stops_at_the_final_eos(tok):
    prompt_text, response_text = split_conversation(tok, "hello", "the cat")
    assert prompt_text == render_prompt(tok, "hello")
    assert response_text.endswith(tok.eos_token) and "the cat" in response_text
    if tok.chat_template and "im_start" in tok.chat_template:  # ChatML writes "\n" after <|im_end|>
        assert render_conversation(tok, "hello", "the cat") == prompt_text + response_text + "\n"
