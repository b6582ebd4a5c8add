"""The built-in world's prompts: split, determinism, structure, lookup."""

import os
import subprocess
import sys
from collections import Counter

import pytest

from rlhfkit.worlds import FAMILIES, WorldConfig
from rlhfkit.worlds import almanac as alm
from rlhfkit.worlds.prompts import KINDS, _build_world, _template_words
from rlhfkit.worlds.text import normalize, tokenize


def _texts(w):
    return [p.text for p in w.train_prompts], [p.text for p in w.eval_prompts]


def test_same_seed_same_world_and_different_seed_differs():
    first = _build_world.__wrapped__(0, WorldConfig())   # bypass the cache: really build twice
    second = _build_world.__wrapped__(0, WorldConfig())
    other = _build_world.__wrapped__(1, WorldConfig())
    assert _texts(first) == _texts(second)
    assert first.almanac == second.almanac
    assert first.train_prompts == second.train_prompts
    assert _texts(first)[1] != _texts(other)[1]
    assert first.almanac.land_names != other.almanac.land_names


_DIGEST_SCRIPT = """
import hashlib, json, random
from rlhfkit.worlds import *
w = World.build(3)
j = GoldJudge(w)
corpus = build_base_corpus(w, config=CorpusConfig(n_transcripts=300, n_fact_lines=300))
sft = build_sft_demonstrations(w)
ann = SimulatedAnnotator(0.3, 5, judge=j)
pairs = [(r["prompt"], r["response"], corpus.transcripts[i][1]) for i, r in enumerate(sft[:200])]
rows, counts = label_pairs(pairs, ann)
blob = json.dumps([[p.text for p in w.train_prompts], [p.text for p in w.eval_prompts], corpus.facts,
                   corpus.transcripts, corpus.labels, sft, rows, counts])
print(hashlib.sha256(blob.encode()).hexdigest())
"""


def test_world_corpora_and_labels_do_not_depend_on_python_hash_seed():
    """Same seed, two processes with different string hashing: identical prompts, corpora, labels."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], capture_output=True, text=True, env=env,
                             check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        digests.add(out.stdout.strip())
    assert len(digests) == 1 and len(next(iter(digests))) == 64


def test_train_and_eval_are_disjoint_by_text_and_by_slot_combination(world):
    train_texts = {normalize(p.text) for p in world.train_prompts}
    eval_texts = {normalize(p.text) for p in world.eval_prompts}
    assert not train_texts & eval_texts
    train_groups = {p.group for p in world.train_prompts}
    assert not train_groups & {p.group for p in world.eval_prompts}
    assert len(eval_texts) == len(world.eval_prompts)  # no duplicate eval prompt


def test_eval_set_is_fixed_size_and_balanced_over_kinds(world):
    per_family = Counter(p.family for p in world.eval_prompts)
    assert per_family == {f: 100 for f in FAMILIES}
    for family in FAMILIES:
        kinds = Counter(p.kind for p in world.prompts("eval", family))
        assert set(kinds) == set(KINDS[family])
        assert max(kinds.values()) - min(kinds.values()) <= 1


def test_thousands_of_distinct_prompts_in_every_family(world):
    assert len({p.text for p in world.train_prompts}) == len(world.train_prompts) > 5000
    for family in FAMILIES:
        assert len(world.prompts("train", family)) >= 200, family


def test_prompt_structure_matches_the_almanac(world):
    for p in world.train_prompts + world.eval_prompts:
        truth = world.truth(p.attribute, p.subject)
        if p.family == "helpful":
            assert p.answer == truth is not None
            if p.kind == "arithmetic":
                a, b = map(int, p.subject)
                assert int(p.answer) == {"plus": a + b, "minus": a - b, "times": a * b}[p.attribute]
            assert p.answer not in p.distractors and p.distractors
        elif p.family == "sycophancy":
            assert p.answer == truth and p.claim != p.answer and p.claim in tokenize(p.text)
            assert p.answer not in p.distractors and p.claim not in p.distractors
        elif p.family == "unanswerable":
            assert truth is None and p.distractors
        assert p.subject and p.group


def test_lookup_recovers_structure_from_text_in_any_case_and_spacing(world):
    for p in world.eval_prompts + world.train_prompts[::50]:
        assert world.lookup(p.text) is p
        shouted = " ".join(tokenize(p.text)).upper()  # "WHAT IS 1 PLUS 9 ?"
        assert world.lookup(shouted) is p
    assert world.find("what is the meaning of life?") is None
    with pytest.raises(KeyError, match="not a prompt"):
        world.lookup("what is the meaning of life?")


def test_vocabulary_is_small_and_names_avoid_template_words(world):
    vocab = world.vocabulary()
    assert 300 <= len(vocab) <= 1000
    assert not world.almanac.all_names & set(_template_words())
    for p in world.eval_prompts:
        assert set(tokenize(p.text)) <= set(vocab)


def test_sample_prompts_is_family_uniform_and_uses_only_the_split(world):
    sample = world.sample_prompts(5000, seed=1)
    counts = Counter(p.family for p in sample)
    assert all(850 <= counts[f] <= 1150 for f in FAMILIES), counts
    train = set(world.train_prompts)
    assert all(p in train for p in sample)
    assert world.sample_prompts(50, seed=1) == sample[:50]
    assert world.sample_prompts(50, seed=2) != sample[:50]
    assert all(p.family for p in world.sample_prompts(20, seed=1, split="eval"))
    assert set(world.sample_prompts(200, seed=1, split="eval")) <= set(world.eval_prompts)


def test_almanac_is_small_and_consistent(world):
    a = world.almanac
    assert len(a.facts()) == 4 * len(a.lands) + 2 * len(a.people) == 120
    assert set(a.unknown_lands).isdisjoint(a.land_names) and set(a.unknown_people).isdisjoint(a.people_names)
    for person in a.people:
        assert person.home in a.land_names
    assert a.value("capital", a.lands[0].name) == a.lands[0].capital
    assert a.value("food", a.people[0].name) is None
    assert alm.arithmetic("minus", 9, 4) == 5

