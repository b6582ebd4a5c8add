"""The local-LM judge (`--judge lm:DIR`): answer log-probs, both orders, position bias cancelled, the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from stage_helpers import model_dir

from rlhfkit.cli import main as cli
from rlhfkit.data import encode_pair, load_rows
from rlhfkit.judges.lm_judge import COMPARE_QUESTION, LMJudge

torch.set_num_threads(1)

PROMPTS = ["what is the colour of the cat?", "what is the colour of the dog?", "is the sun yellow?",
           "what is the answer?"]
PAIRS = [(PROMPTS[i % 4], a, b) for i, (a, b) in enumerate([
    ("the cat is red.", "the cat is blue."), ("the dog is green.", "maybe."), ("yes.", "no, the sun is white."),
    ("sorry.", "the answer is a tree."), ("the cat is black.", "the cat is black, thanks."),
    ("good.", "bad."), ("the moon is white.", "the rock is yellow."), ("please.", "thanks.")])]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("lm_judge"), seed=3)


@pytest.fixture(scope="module")
def judge(folder):
    return LMJudge.from_folder(folder, batch_size=3)


def unbatched_logodds(model, tokenizer, question: str) -> float:
    """log π(A-reply | q) − log π(B-reply | q), one sequence per forward, log-softmax by hand."""
    total = {}
    for letter in ("A", "B"):
        prompt_ids, reply_ids = encode_pair(tokenizer, question, letter)
        reply_ids = reply_ids[:-1]  # without the EOS
        ids = torch.tensor([prompt_ids + reply_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]  # (T, V)
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        total[letter] = sum(float(log_probs[len(prompt_ids) + k - 1, token]) for k, token in enumerate(reply_ids))
    return total["A"] - total["B"]


def test_margin_is_the_difference_of_both_orders_log_odds(judge):
    margins = judge.margins(*zip(*PAIRS))
    for (prompt, a, b), m in zip(PAIRS, margins):
        ab = unbatched_logodds(judge.model, judge.tokenizer, COMPARE_QUESTION.format(prompt=prompt, a=a, b=b))
        ba = unbatched_logodds(judge.model, judge.tokenizer, COMPARE_QUESTION.format(prompt=prompt, a=b, b=a))
        assert m.logodds_a_first == pytest.approx(ab, abs=1e-4)
        assert m.logodds_b_first == pytest.approx(ba, abs=1e-4)
        assert m.margin == pytest.approx(ab - ba, abs=2e-4)
        assert m.position_bias == pytest.approx((ab + ba) / 2, abs=1e-4)


def test_swapping_a_and_b_flips_the_decision_or_ties(judge):
    prompts, first, second = zip(*PAIRS)
    forward = judge.compare_batch(prompts, first, second)
    backward = judge.compare_batch(prompts, second, first)
    flip = {"a": "b", "b": "a", "tie": "tie"}
    assert backward == [flip[v] for v in forward]
    assert {"a", "b"} <= set(forward)  # a random model still has preferences; the test is not vacuous
    swapped = judge.margins(prompts, second, first)
    assert [m.margin for m in swapped] == [-m.margin for m in judge.margins(prompts, first, second)]  # bit for bit
    assert judge.compare(prompts[0], first[0], " ".join(first[0].split()) + " ") == "tie"  # identical text


class FirstSlotLover(torch.nn.Module):
    """The wrapped LM with ``bias`` added to the logit of the token that spells the letter A: a judge that
    prefers whatever is shown first, by exactly ``bias`` nats of log-odds."""

    def __init__(self, inner, token_id: int, bias: float) -> None:
        super().__init__()
        self.inner, self.token_id, self.bias = inner, token_id, bias
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache).logits.clone()
        logits[..., self.token_id] += self.bias
        return SimpleNamespace(logits=logits)


def test_both_orders_cancel_a_position_bias(judge):
    a_ids, b_ids = judge._answers["A"], judge._answers["B"]
    assert a_ids[:-1] == b_ids[:-1] and a_ids[-1] != b_ids[-1]  # the letters differ in their last token only
    biased = LMJudge(FirstSlotLover(judge.model, a_ids[-1], bias=6.0), judge.tokenizer, batch_size=3)
    prompts, first, second = zip(*PAIRS)
    plain, shifted = judge.margins(prompts, first, second), biased.margins(prompts, first, second)
    for p, s in zip(plain, shifted):
        assert s.logodds_a_first == pytest.approx(p.logodds_a_first + 6.0, abs=1e-4)
        assert s.logodds_b_first == pytest.approx(p.logodds_b_first + 6.0, abs=1e-4)
        assert s.margin == pytest.approx(p.margin, abs=2e-4)  # the bias is gone from the decision
        assert s.logodds_a_first > 0 and s.logodds_b_first > 0  # one order alone would always answer "A"
    assert biased.compare_batch(prompts, first, second) == judge.compare_batch(prompts, first, second)


def test_score_is_yes_no_log_odds(judge):
    scores = judge.score_batch(PROMPTS[:2], ["the cat is red.", "maybe."])
    assert len(scores) == 2 and all(isinstance(s, float) and abs(s) < 50 for s in scores)
    assert judge.score(PROMPTS[1], "maybe.") == pytest.approx(scores[1], abs=1e-4)


def test_label_cli_with_an_lm_judge(tmp_path, folder, judge):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": p, "a": a, "b": b}) + "\n" for p, a, b in PAIRS))
    out = tmp_path / "prefs.jsonl"
    assert cli(["label", "--judge", f"lm:{folder}", "--pairs", str(pairs_file), "--out", str(out),
                "--batch-size", "4"]) == 0
    rows = load_rows(out, "preference").rows
    verdicts = judge.compare_batch(*zip(*PAIRS))
    expected = [(p, a, b) if v == "a" else (p, b, a) for (p, a, b), v in zip(PAIRS, verdicts) if v != "tie"]
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == expected
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["judge"] == f"lm:{folder}" and manifest["counts"]["labelled"] == len(rows)


def test_chat_prompts_are_shown_as_role_lines(judge):
    from rlhfkit.data import Message
    from rlhfkit.judges.lm_judge import render_text

    chat = [Message("system", "be brief."), Message("user", PROMPTS[0])]
    assert render_text(chat) == f"system: be brief.\nuser: {PROMPTS[0]}"
    as_text = judge.margins([render_text(chat)], ["the cat is red."], ["maybe."])[0]
    as_chat = judge.margins([chat], ["the cat is red."], ["maybe."])[0]
    assert as_chat.margin == pytest.approx(as_text.margin, abs=1e-5)
