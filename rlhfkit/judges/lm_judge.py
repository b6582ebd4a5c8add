"""A local causal LM as a judge (RLAIF): it is asked which of two responses is better, A or B.

``rlhfkit label --judge lm:DIR`` uses it. Nothing is generated: the judge reads the model's log-probabilities
of the two possible answers.

1. **The question.** :data:`COMPARE_QUESTION` shows the request and the two responses labelled A and B and
   ends with "Which response is better, A or B?". It is one user message rendered with the model's chat
   template (the tokenizer's own, else the library's default ``User: … Assistant:``; ``template="raw"`` uses
   the text as it is, followed by ``"\\nAnswer:"``), exactly as :func:`rlhfkit.data.encode_pair` renders a
   prompt.
2. **The answer tokens.** The reply ``"A"`` (or ``"B"``) is encoded as the assistant's turn after the
   question — with the world's and the default template that is the text ``" A"`` / ``" B"`` — without its
   EOS. ``ℓ(q) = log π(" A" | q) − log π(" B" | q)`` is the model's log-odds for A (a sum over the answer's
   tokens when a letter takes more than one).
3. **Both orders.** LMs prefer one position (usually the first) whatever it holds. With ``q_ab`` showing a
   as A and ``q_ba`` showing b as A, write ``ℓ(q_ab) = s + c`` and ``ℓ(q_ba) = −s + c``, where ``s`` is the
   preference for a's content and ``c`` the position bias. The judge's **margin**
   ``m(a, b) = ℓ(q_ab) − ℓ(q_ba) = 2s`` cancels any constant ``c`` exactly; ``(ℓ(q_ab) + ℓ(q_ba)) / 2 = c``
   is reported as the position bias. ``compare`` says ``"a"`` when ``m > tie_margin``, ``"b"`` when
   ``m < −tie_margin``, else ``"tie"``; identical texts are a tie without asking.
4. **Exact symmetry.** Both orders are always evaluated for the pair in one canonical order (sorted texts)
   and the sign flipped for the other, so ``m(b, a) = −m(a, b)`` holds bit for bit, whatever the batching.

``score(prompt, response)`` asks :data:`SCORE_QUESTION` ("Is this response helpful, honest and harmless?")
and returns ``log π(" Yes") − log π(" No")``. A question that does not fit the model's positions keeps its
last tokens (the responses and the question about them). Works for any causal LM folder, plain or PEFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data import RAW, encode_pair
from rlhfkit.judges.base import outcome

COMPARE_QUESTION = (
    "Here is a request and two responses to it.\n\n"
    "Request: {prompt}\n\n"
    "Response A: {a}\n\n"
    "Response B: {b}\n\n"
    "A good response is helpful, honest and harmless, and no longer than needed. "
    "Which response is better, A or B?"
)
SCORE_QUESTION = (
    "Here is a request and a response to it.\n\n"
    "Request: {prompt}\n\n"
    "Response: {response}\n\n"
    "Is this response helpful, honest and harmless? Answer Yes or No."
)
RAW_ANSWER_CUE = "\nAnswer:"


@dataclass(frozen=True)
class PairMargin:
    """The LM judge's reading of one pair: ``margin`` > 0 favours a (see the module docstring)."""

    margin: float  # m(a, b) = ℓ(q_ab) − ℓ(q_ba)
    logodds_a_first: float  # ℓ(q_ab): log-odds of " A" with a shown as A
    logodds_b_first: float  # ℓ(q_ba): log-odds of " A" with b shown as A

    @property
    def position_bias(self) -> float:
        """``(ℓ(q_ab) + ℓ(q_ba)) / 2``: how much the model favours the first slot whatever it holds."""
        return (self.logodds_a_first + self.logodds_b_first) / 2

    @property
    def single_order_disagrees(self) -> bool:
        """Whether one order alone would have picked the same slot both times (a position-driven answer)."""
        return (self.logodds_a_first > 0) == (self.logodds_b_first > 0)


def render_text(value: Any) -> str:
    """A prompt as text for the question: strings as they are, chat messages as ``role: content`` lines."""
    if isinstance(value, str):
        return value
    lines = []
    for message in value:
        role = getattr(message, "role", None) or message["role"]
        content = getattr(message, "content", None) or message["content"]
        lines.append(f"{role}: {content}")
    return "\n".join(lines)


class LMJudge:
    """A causal LM asked to compare (see the module docstring). ``model``/``tokenizer`` in memory;
    ``template``: None (the tokenizer's chat template), ``"raw"`` or a Jinja string; ``batch_size``: rows
    per forward; ``tie_margin``: margins this small are ties."""

    def __init__(self, model, tokenizer, *, template: str | None = None, batch_size: int = 16,
                 tie_margin: float = 0.0, name: str = "lm") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size
        self.tie_margin = float(tie_margin)
        self.name = name
        config = getattr(model, "config", None)
        self.max_positions = (getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
                              if config is not None else None)
        self._answers = {letter: self._answer_ids(letter) for letter in ("A", "B", "Yes", "No")}

    @classmethod
    def from_folder(cls, path: str | Path, *, dtype=None, **kwargs) -> LMJudge:
        """Load a causal LM folder (or PEFT adapter folder) and its tokenizer, offline."""
        from rlhfkit.models import load_causal_lm, load_tokenizer

        kwargs.setdefault("name", f"lm:{path}")
        return cls(load_causal_lm(path, dtype), load_tokenizer(path), **kwargs)

    # ---- encoding ------------------------------------------------------------------------------------------
    def _question(self, text: str) -> str:
        return text + RAW_ANSWER_CUE if self.template == RAW else text

    def _answer_ids(self, answer: str) -> list[int]:
        """Token ids of the assistant's reply ``answer`` after a question, without the closing EOS."""
        reply = " " + answer if self.template == RAW else answer
        _, reply_ids = encode_pair(self.tokenizer, self._question("Which?"), reply, template=self.template)
        eos = self.tokenizer.eos_token_id
        ids = reply_ids[:-1] if reply_ids and reply_ids[-1] == eos else reply_ids
        if not ids:
            raise ValueError(f"the answer {answer!r} encodes to no token with this tokenizer and template")
        return ids

    def _question_ids(self, text: str, answer_length: int) -> list[int]:
        ids, _ = encode_pair(self.tokenizer, self._question(text), "A", template=self.template)
        if self.max_positions is not None and len(ids) + answer_length > self.max_positions:
            ids = ids[len(ids) + answer_length - self.max_positions :]  # keep the end: the question itself
        return ids

    # ---- the forward ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def answer_logprobs(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """``log π(answer | question)`` for each ``(question_ids, answer_ids)``: summed over the answer's tokens.

        Rows are right-padded into batches of ``batch_size`` (position ids from the mask, so padding never
        matters); ``logits[t]`` predicts token ``t + 1``.
        """
        from rlhfkit.data import IGNORE_INDEX
        from rlhfkit.models.forward import forward_logits
        from rlhfkit.ops import logprobs_from_logits, shift_labels

        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            width = max(len(q) + len(a) for q, a in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for i, (question, answer) in enumerate(chunk):
                n = len(question) + len(answer)
                ids[i, :n] = torch.tensor(question + answer)
                mask[i, :n] = 1
                labels[i, len(question) : n] = torch.tensor(answer)
            logits = forward_logits(self.model, ids.to(device), mask.to(device))  # (B, T, V)
            token_logprobs = logprobs_from_logits(logits, shift_labels(labels).to(device))  # (B, T), 0 off-answer
            out.extend(token_logprobs.sum(dim=1).tolist())
        return out

    def _logodds(self, questions: Sequence[str], yes: str, no: str) -> list[float]:
        """``log π(yes | q) − log π(no | q)`` for each question text."""
        yes_ids, no_ids = self._answers[yes], self._answers[no]
        rows = []
        for text in questions:
            question = self._question_ids(text, max(len(yes_ids), len(no_ids)))
            rows += [(question, yes_ids), (question, no_ids)]
        logprobs = self.answer_logprobs(rows)
        return [logprobs[2 * i] - logprobs[2 * i + 1] for i in range(len(questions))]

    # ---- the judge interface -------------------------------------------------------------------------------
    def margins(self, prompts: Sequence[Any], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[PairMargin]:
        """:class:`PairMargin` of every pair, both orders in one batched pass (canonical order, see step 4)."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} A responses, {len(responses_b)} B responses")
        questions, flipped = [], []
        for prompt, a, b in zip(prompts, responses_a, responses_b):
            first, second = (a, b) if a <= b else (b, a)
            flipped.append(a > b)
            text = render_text(prompt)
            questions.append(COMPARE_QUESTION.format(prompt=text, a=first, b=second))
            questions.append(COMPARE_QUESTION.format(prompt=text, a=second, b=first))
        logodds = self._logodds(questions, "A", "B")
        out = []
        for i, swap in enumerate(flipped):
            first_shown, second_shown = logodds[2 * i], logodds[2 * i + 1]
            if swap:  # canonical "first" is b: ℓ(q_ab) is the second question's
                out.append(PairMargin(second_shown - first_shown, second_shown, first_shown))
            else:
                out.append(PairMargin(first_shown - second_shown, first_shown, second_shown))
        return out

    def compare_batch(self, prompts: Sequence[Any], responses_a: Sequence[str],
                      responses_b: Sequence[str]) -> list[str]:
        """``"a"`` / ``"b"`` / ``"tie"`` for every pair; identical texts (whitespace aside) tie without a forward."""
        verdicts: list[str] = ["tie"] * len(prompts)
        asked = [i for i, (a, b) in enumerate(zip(responses_a, responses_b)) if " ".join(a.split()) != " ".join(b.split())]
        found = self.margins([prompts[i] for i in asked], [responses_a[i] for i in asked],
                             [responses_b[i] for i in asked]) if asked else []
        for i, margin in zip(asked, found):
            verdicts[i] = outcome(margin.margin, 0.0, self.tie_margin)
        return verdicts

    def compare(self, prompt: Any, a: str, b: str) -> str:
        return self.compare_batch([prompt], [a], [b])[0]

    def score_batch(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """``log π(" Yes") − log π(" No")`` after :data:`SCORE_QUESTION` for each response."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self._logodds([SCORE_QUESTION.format(prompt=render_text(p), response=r)
                              for p, r in zip(prompts, responses)], "Yes", "No")

    def score(self, prompt: Any, response: str) -> float:
        return self.score_batch([prompt], [response])[0]
