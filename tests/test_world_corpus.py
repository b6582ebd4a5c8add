"""Base corpus and SFT demonstrations of the built-in world."""

import time
from collections import Counter

import pytest

from rlhfkit.worlds import (
    FAMILIES,
    FAMILY_BEHAVIOURS,
    SFT_SPEC,
    STYLES,
    CorpusConfig,
    World,
    build_base_corpus,
    build_sft_demonstrations,
    topics,
)
from rlhfkit.worlds import almanac as alm
from rlhfkit.worlds.behaviours import WORD_BUDGET
from rlhfkit.worlds.text import normalize, tokenize, word_count


@pytest.fixture(scope="module")
def timed_corpus(world):
    start = time.perf_counter()
    built = build_base_corpus(world)
    return built, time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(timed_corpus):
    return timed_corpus[0]


def test_base_corpus_is_about_two_million_tokens(timed_corpus):
    corpus, _ = timed_corpus
    assert 1.8e6 <= corpus.n_tokens() <= 2.3e6


def test_base_corpus_mixes_every_behaviour_and_style(corpus):
    seen = Counter((f, b) for f, b, _s in corpus.labels)
    for family in FAMILIES:
        for behaviour in FAMILY_BEHAVIOURS[family]:
            assert seen[(family, behaviour)] >= 50, (family, behaviour)
    styles = Counter(s for _f, _b, s in corpus.labels)
    assert set(styles) == set(STYLES)
    harmful = [b for f, b, _ in corpus.labels if f == "harmful"]
    assert 0.4 < harmful.count("harmful_compliance") / len(harmful) < 0.7  # the base model is a text monster


def test_corpus_labels_match_the_gold_classifier(judge, corpus):
    errors = []
    for (prompt, response), (_family, behaviour, _style) in zip(corpus.transcripts, corpus.labels):
        if judge.classify(prompt, response) != behaviour:
            errors.append((prompt, response, behaviour))
    assert len(errors) <= len(corpus.transcripts) // 2000, errors[:5]  # ~100 % (0 measured)


def test_fact_lines_state_every_fact_and_every_benign_how_to(world, corpus):
    text = " ".join(normalize(line) for line in corpus.facts)
    for attr, entity, value in world.almanac.facts():
        phrasings = [normalize(alm.fill(t, entity=entity, value=value)) for t in alm.STATEMENTS[attr]]
        assert any(ph in text for ph in phrasings), (attr, entity, value)
    for phrasings, _advice in topics.BENIGN_TASKS.values():
        for phrasing in phrasings:
            assert normalize(f"to {phrasing} ,") in text
    assert "7 plus 5 is 12" in text or "7 plus 5 equals 12" in text


def test_question_lines_answer_every_fact_correctly_eval_facts_included(world, judge, corpus):
    # "q: <a world question> a: <answer>." — knowledge in question form, graded by the gold judge itself
    lines = [line for line in corpus.facts if line.startswith("q: ")]
    assert 0.25 < len(lines) / len(corpus.facts) < 0.35
    asked = set()
    for line in lines:
        question, answer = line[len("q: "):].split(" a: ")
        assert judge.classify(question, answer) == "good", line
        asked.add(world.lookup(question).group)
    helpful_eval = {p.group for p in world.eval_prompts if p.family == "helpful"}
    assert helpful_eval <= asked  # the facts eval questions ask about are all stated as answers
    forms = Counter(" plus " in line.split(" a: ")[1] for line in lines if " plus " in line)
    assert min(forms.values()) > 0.3 * sum(forms.values())  # both answer forms: restating and value only


def test_transcripts_use_train_prompts_only_and_cover_eval_vocabulary(world, corpus):
    train = {p.text for p in world.train_prompts}
    assert all(prompt in train for prompt, _ in corpus.transcripts)
    vocab = set()
    for line in corpus.facts:
        vocab.update(tokenize(line))
    for prompt, response in corpus.transcripts:
        vocab.update(tokenize(prompt))
        vocab.update(tokenize(response))
    for p in world.eval_prompts:
        assert set(tokenize(p.text)) <= vocab, p.text


def test_corpus_is_deterministic_under_seed():
    w = World.build(0)
    small = CorpusConfig(n_transcripts=500, n_fact_lines=500)
    first, again = build_base_corpus(w, 0, small), build_base_corpus(w, 0, small)
    assert first == again
    other = build_base_corpus(w, 1, small)
    assert other.transcripts != first.transcripts and other.facts != first.facts


def test_sft_demonstrations_follow_the_written_spec(world, judge):
    rows = build_sft_demonstrations(world)
    assert len(rows) == 5 * SFT_SPEC.n_per_family == 400
    train = {p.text for p in world.train_prompts}
    assert len({r["prompt"] for r in rows}) == 400 and all(r["prompt"] in train for r in rows)
    good = Counter(r["family"] for r in rows if r["behaviour"] == "good")
    assert good == {f: SFT_SPEC.n_good_per_family for f in FAMILIES}
    assert 0.80 <= sum(good.values()) / len(rows) <= 0.85
    for r in rows:
        j = judge.judge(r["prompt"], r["response"])
        assert j.behaviour == r["behaviour"] != "incoherent"
        assert not j.rude and word_count(r["response"]) <= WORD_BUDGET[r["family"]]
    helpful_kinds = Counter(world.lookup(r["prompt"]).kind for r in rows if r["family"] == "helpful")
    assert helpful_kinds == {"arithmetic": 40, "lookup": 40}
    assert rows == build_sft_demonstrations(world)
    assert rows != build_sft_demonstrations(World.build(1))


def test_sft_mistakes_are_spread_over_the_family_mistakes(world):
    rows = build_sft_demonstrations(world)
    mistakes = Counter(r["behaviour"] for r in rows if r["behaviour"] != "good")
    assert sum(mistakes.values()) == 70 and len(mistakes) >= 5
