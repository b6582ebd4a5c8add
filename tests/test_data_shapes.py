"""The ecosystem's row shapes read as ours: TRL's prompt-completion and implicit-prompt preferences, HH
transcripts, renamed columns — and a known foreign shape refused with its name and the fix."""

from __future__ import annotations

import pytest

from rlhfkit.data.formats import DataValidationError, Message, PreferenceRow, PromptRow, SFTRow, load_rows
from rlhfkit.data.shapes import FOREIGN, SHAPES, pick_shape
from rlhfkit.data.transcripts import split_common_text, split_hh_transcript


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def problems(rows, kind, **kwargs):
    with pytest.raises(DataValidationError) as info:
        load_rows(rows, kind, **kwargs)
    return info.value.problems


# ----------------------------------------------------------------------------- TRL's shapes


def test_trl_prompt_completion_is_an_sft_row_in_both_forms():
    standard = load_rows([{"prompt": "2+2?", "completion": " 4."}], "sft").rows
    assert standard == [SFTRow("2+2?", " 4.")]
    chat = load_rows([{"prompt": [user("2+2?")], "completion": [assistant("4.")]}], "sft").rows
    assert chat == [SFTRow([Message("user", "2+2?")], [Message("assistant", "4.")])]


def test_trl_prompt_only_rows_in_both_forms():
    assert load_rows([{"prompt": "Tell a joke."}], "prompt").rows == [PromptRow("Tell a joke.")]
    assert load_rows([{"prompt": [user("Hi")]}], "prompt").rows == [PromptRow([Message("user", "Hi")])]


def test_implicit_prompt_conversations_split_at_the_last_shared_user_turn():
    row = {"chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4.")],
           "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5.")]}
    (got,) = load_rows([row], "preference").rows
    assert got == PreferenceRow([Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "2+2?")],
                                [Message("assistant", "4.")], [Message("assistant", "5.")])


def test_an_identical_first_reply_stays_in_both_responses():
    """The common start ends in an assistant turn: the prompt stops before it (it must end with the user)."""
    row = {"chosen": [user("Hi"), assistant("Well,"), assistant("yes.")],
           "rejected": [user("Hi"), assistant("Well,"), assistant("no.")]}
    (got,) = load_rows([row], "preference").rows
    assert got.prompt == [Message("user", "Hi")]
    assert got.chosen == [Message("assistant", "Well,"), Message("assistant", "yes.")]


def test_implicit_prompt_strings_split_as_trl_does():
    assert split_common_text("Q: 2+2? 4", "Q: 2+2? 5") == ("Q: 2+2?", " 4", " 5")
    (got,) = load_rows([{"chosen": "The sky is blue.", "rejected": "The sky is green."}], "preference").rows
    assert (got.prompt, got.chosen, got.rejected) == ("The sky is", " blue.", " green.")


def test_implicit_prompt_problems_name_the_row_and_field():
    (p,) = problems([{"chosen": [assistant("a")], "rejected": [assistant("b")]}], "preference")
    assert p.startswith('<list> row 0, field "chosen": shares no first turns with "rejected"')
    (p,) = problems([{"chosen": [user("q"), assistant("a")], "rejected": "b"}], "preference")
    assert p.startswith('<list> row 0, field "rejected": expected the same type as "chosen"')
    (p,) = problems([{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), {"role": "bot", "content": "b"}]}],
                    "preference")
    assert p == '<list> row 0, field "rejected[1].role": unknown role "bot" (valid: system, user, assistant).'
    (p,) = problems([{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), user("b")]}], "preference")
    assert p.startswith('<list> row 0, field "rejected[1].role": after the shared prompt')


# ----------------------------------------------------------------------------- HH transcripts


HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
HH_REJECTED = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: Go away."


def test_hh_transcripts_split_into_turns():
    assert split_hh_transcript(HH_CHOSEN) == [Message("user", "Hi there"), Message("assistant", "Hello!"),
                                              Message("user", "What is 2+2?"), Message("assistant", "It is 4.")]
    # an HH prompt ends with an empty "Assistant:" (the generation prompt): no turn
    assert split_hh_transcript("\n\nHuman: Hi\n\nAssistant:") == [Message("user", "Hi")]
    # a turn's text may hold single newlines and the word "Human:" mid-line
    assert split_hh_transcript("Human: a\nb Human: c\n\nAssistant: d") == [Message("user", "a\nb Human: c"),
                                                                          Message("assistant", "d")]


def test_hh_rlhf_rows_are_implicit_prompt_conversations():
    (got,) = load_rows([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], "preference").rows
    assert got.prompt == split_hh_transcript(HH_CHOSEN)[:3]
    assert got.chosen == [Message("assistant", "It is 4.")] and got.rejected == [Message("assistant", "Go away.")]


def test_hh_prompt_strings_become_turns_and_their_responses_lose_the_tag_space():
    row = {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4.", "rejected": " 5."}
    (got,) = load_rows([row], "preference").rows
    assert got == PreferenceRow([Message("user", "What is 2+2?")], "4.", "5.")
    (kept,) = load_rows([row], "preference", transcripts=False).rows  # template: raw keeps the text
    assert kept == PreferenceRow(row["prompt"], " 4.", " 5.")


def test_an_empty_hh_turn_is_named():
    bad = "\n\nHuman: Hi\n\nAssistant: \n\nHuman: again\n\nAssistant: ok"
    assert problems([{"chosen": bad, "rejected": bad + "!"}], "preference") == [
        '<list> row 0, field "chosen[1].content": empty text.', '<list> row 0, field "rejected[1].content": empty text.']


# ----------------------------------------------------------------------------- data.columns


def test_columns_are_renamed_and_problems_name_the_source_column():
    rows = [{"question": "2+2?", "answer": "4.", "id": 7}]
    loaded = load_rows(rows, "sft", columns={"question": "prompt", "answer": "response"})
    assert loaded.rows == [SFTRow("2+2?", "4.")] and loaded.ignored_keys == {"id": 1}
    (p,) = problems([{"question": "", "answer": "4."}], "sft", columns={"question": "prompt", "answer": "response"})
    assert p == '<list> row 0, field "question": empty text.'
    (p,) = problems([{"question": "2+2?"}], "sft", columns={"question": "prompt", "answer": "response"})
    assert p.startswith('<list> row 0, field "answer": missing')


def test_bad_column_mappings_are_refused_before_reading():
    (p,) = problems([{"q": "x"}], "sft", columns={"q": "question"})
    assert 'maps "q" to "question", which sft rows do not have' in p
    (p,) = problems([{"a": "x", "b": "y"}], "sft", columns={"a": "prompt", "b": "prompt"})
    assert 'maps 2 columns to "prompt"' in p
    (p,) = problems([{"q": "x", "prompt": "y", "response": "z"}], "sft", columns={"q": "prompt"})
    assert p == '<list> row 0, field "q": data.columns renames it to "prompt", but the row has "prompt" too.'


def test_a_dataset_missing_a_column_is_one_sentence_after_renaming():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"question": "a", "reply": "b"}] * 3)
    (p,) = problems(ds, "sft", columns={"question": "prompt"})
    assert p == 'dataset, column "response": missing (the columns are "prompt", "reply").'
    assert load_rows(ds, "sft", columns={"question": "prompt", "reply": "response"}).rows[0] == SFTRow("a", "b")


# ----------------------------------------------------------------------------- foreign shapes


FOREIGN_EXAMPLES = [
    ("sft", {"prompt": "q", "chosen": "a", "rejected": "b"}, "preference rows", "data.columns={chosen: response}"),
    ("sft", {"chosen": "a", "rejected": "b"}, "preference rows", "rlhfkit reward"),
    ("sft", {"text": "Once upon a time"}, "language-modelling format", "{text: messages}"),
    ("sft", {"conversations": [{"from": "human", "value": "hi"}]}, "ShareGPT", "human → user"),
    ("sft", {"instruction": "i", "input": "", "output": "o"}, "Alpaca", "{instruction: prompt, output: response}"),
    ("sft", {"question": "q", "answer": "a"}, "prompt column with another name", "data.columns"),
    ("sft", {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 1]}, "ranking rows", "data_kind=ranking"),
    ("preference", {"prompt": "q", "response": "a"}, "SFT demonstrations", "rlhfkit sft"),
    ("preference", {"prompt": "q", "completion": "a"}, "prompt-completion", "rlhfkit sft"),
    ("preference", {"prompt": "q", "completion": "a", "label": True}, "unpaired preference", "chosen"),
    ("preference", {"prompt": "q", "completions": ["a"], "labels": [True]}, "stepwise-supervision", "rlhfkit does not"),
    ("preference", {"messages": [user("q"), assistant("a")]}, "conversational SFT rows", "rlhfkit sft"),
    ("prompt", {"messages": [user("q")]}, "conversations without a prompt", "{messages: prompt}"),
    ("prompt", {"query": "q"}, "prompt column with another name", "{query: prompt}"),
]


@pytest.mark.parametrize(("kind", "row", "name", "fix"), FOREIGN_EXAMPLES)
def test_a_known_foreign_shape_is_named_with_its_fix(kind, row, name, fix):
    (p,) = problems([row], kind)
    assert p.startswith("<list> row 0: this looks like ") and name in p and fix in p
    assert p.count(".") >= 1 and "\n" not in p


def test_every_foreign_entry_is_exercised_and_never_shadows_a_shape_we_read():
    hit = {pick_shape(kind, row) for kind, row, _, _ in FOREIGN_EXAMPLES}
    assert set(FOREIGN) <= hit
    for kind, shapes in SHAPES.items():
        for shape in shapes:
            assert pick_shape(kind, shape.keys) is shape  # our shapes are tried first


def test_a_row_matching_nothing_reports_our_missing_keys():
    (p,) = problems([{"prompt": "q"}], "sft")
    assert p == '<list> row 0, field "response": missing (the row has keys "prompt").'


def test_a_row_matching_nothing_is_read_as_the_shape_of_the_other_rows():
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c"}]
    (p,) = problems(rows, "sft")
    assert p == '<list> row 1, field "completion": missing (the row has keys "prompt").'
    (p,) = problems(rows[::-1], "sft")  # the usual shape is found wherever the matching rows are
    assert p == '<list> row 0, field "completion": missing (the row has keys "prompt").'
