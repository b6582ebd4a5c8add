"""Leasing and submitting: overlap, never the same item twice, expiry, canonical order, exactly-once."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa
from feedback_helpers import FakeClock, fast_scrypt, pair_rows, seeded_db  # noqa: F401  (fast_scrypt: autouse fixture)

from rlhfkit.feedback import assign, auth
from rlhfkit.feedback import schema as t
from rlhfkit.feedback.assign import ScreenAnswer, canonical_answer
from rlhfkit.feedback.db import Database

LEASE = 600.0


def _open(url, clock=None):
    db = Database.open(url, clock=clock or FakeClock())
    with db.read() as conn:
        users = {name: auth.get_user(conn, name) for name in ("admin", "ann1", "ann2")}
    return db, users


def test_canonical_answer_maps_screen_positions_back():
    # presented_order[slot] = canonical position shown in that slot; here B (slot 1) shows canonical 0.
    assert canonical_answer("pair", [1, 0], ScreenAnswer(choice="B")).ranking == [0, 1]
    assert canonical_answer("pair", [1, 0], ScreenAnswer(choice="A")).ranking == [1, 0]
    assert canonical_answer("pair", [0, 1], ScreenAnswer(choice="A")).ranking == [0, 1]
    tie = canonical_answer("pair", [1, 0], ScreenAnswer(choice="tie"))
    assert tie.outcome == "tie" and tie.ranking is None
    ranked = canonical_answer("rank", [2, 0, 1], ScreenAnswer(ranking=[1, 2, 0]))
    assert ranked.ranking == [0, 1, 2]  # slot 1 shows canonical 0, slot 2 shows 1, slot 0 shows 2
    flagged = canonical_answer("pair", [1, 0], ScreenAnswer(choice="A", flags={0: ["harmful"], 1: []}))
    assert flagged.flags == {"1": ["harmful"]}
    demo = canonical_answer("demo", [], ScreenAnswer(response="  The ideal answer. "))
    assert demo.outcome == "demo" and demo.response_text == "  The ideal answer. "


@pytest.mark.parametrize("kind,order,answer,words", [
    ("pair", [0, 1], ScreenAnswer(choice="C"), "choice must be one of"),
    ("pair", [0, 1], ScreenAnswer(choice=None), "choice must be one of"),
    ("rank", [0, 1, 2], ScreenAnswer(ranking=[0, 0, 1]), "permutation"),
    ("rank", [0, 1, 2], ScreenAnswer(ranking=[0, 1]), "permutation"),
    ("rank", [0, 1, 2], ScreenAnswer(ranking=[0, 1, 3]), "permutation"),
    ("rank", [0, 1, 2], ScreenAnswer(ranking=[True, 0, 2]), "permutation"),
    ("rank", [0, 1, 2], ScreenAnswer(ranking=None), "permutation"),
    ("demo", [], ScreenAnswer(response="   "), "empty"),
    ("pair", [0, 1], ScreenAnswer(choice="A", flags={0: ["lovely"]}), "unknown flag"),
    ("pair", [0, 1], ScreenAnswer(choice="A", flags={5: ["harmful"]}), "not a response slot"),
    ("pair", [0, 1], ScreenAnswer(choice="A", note="x" * 2001), "limit"),
])
def test_invalid_answers_are_refused(kind, order, answer, words):
    with pytest.raises(assign.InvalidAnswer, match=words):
        canonical_answer(kind, order, answer)


def test_overlap_is_respected_and_nobody_sees_an_item_twice(tmp_path):
    url = seeded_db(tmp_path, pair_rows(3), overlap=2, users=("admin", "ann1", "ann2"))
    db, users = _open(url)
    seen: Counter[str] = Counter()
    for name in ("ann1", "ann2", "admin"):
        prompts = []
        while (task := assign.lease_next(db, users[name], lease_seconds=LEASE)) is not None:
            assign.submit(db, users[name], task.assignment_id, ScreenAnswer(choice="A"))
            prompts.append(task.prompt)
        assert len(prompts) == len(set(prompts))  # never the same item twice
        seen.update(prompts)
    assert seen == {f"Question p{i}?": 2 for i in range(3)}  # exactly the overlap, every item
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.judgments)).scalar_one() == 6


def test_fewest_judgments_first_and_a_held_lease_is_returned_again(tmp_path):
    url = seeded_db(tmp_path, pair_rows(2), overlap=2)
    db, users = _open(url)
    first = assign.lease_next(db, users["ann1"], lease_seconds=LEASE)
    again = assign.lease_next(db, users["ann1"], lease_seconds=LEASE)
    assert again.assignment_id == first.assignment_id  # no hoarding: one open lease per annotator
    other = assign.lease_next(db, users["ann2"], lease_seconds=LEASE)
    assert other.prompt != first.prompt  # the untouched item has fewer active assignments


def test_expired_lease_frees_the_slot_and_late_submit_is_handled(tmp_path):
    url = seeded_db(tmp_path, pair_rows(1), overlap=1)
    clock = FakeClock()
    db, users = _open(url, clock)
    held = assign.lease_next(db, users["ann1"], lease_seconds=LEASE)
    assert assign.lease_next(db, users["ann2"], lease_seconds=LEASE) is None  # the only slot is leased
    clock.advance(LEASE + 1)
    assert assign.get_task(db, users["ann1"], held.assignment_id)[1] == "expired"
    # Expired but nobody took the slot: the late answer is still kept.
    assert assign.submit(db, users["ann1"], held.assignment_id, ScreenAnswer(choice="B")) > 0

    second = tmp_path / "second"
    second.mkdir()
    url2 = seeded_db(second, pair_rows(1), overlap=1)
    db2, users2 = _open(url2, clock)
    stale = assign.lease_next(db2, users2["ann1"], lease_seconds=LEASE)
    clock.advance(LEASE + 1)
    taken = assign.lease_next(db2, users2["ann2"], lease_seconds=LEASE)
    assert taken is not None and taken.prompt == stale.prompt  # the expired slot went to someone else
    assign.submit(db2, users2["ann2"], taken.assignment_id, ScreenAnswer(choice="A"))
    with pytest.raises(assign.LeaseExpired):
        assign.submit(db2, users2["ann1"], stale.assignment_id, ScreenAnswer(choice="A"))
    assert assign.lease_next(db2, users2["ann1"], lease_seconds=LEASE) is None  # already seen by ann1


def test_double_submit_foreign_assignment_and_skip(tmp_path):
    url = seeded_db(tmp_path, pair_rows(2), overlap=1)
    db, users = _open(url)
    task = assign.lease_next(db, users["ann1"], lease_seconds=LEASE)
    with pytest.raises(assign.AssignmentNotFound):
        assign.submit(db, users["ann2"], task.assignment_id, ScreenAnswer(choice="A"))
    with pytest.raises(assign.AssignmentNotFound):
        assign.get_task(db, users["ann2"], task.assignment_id)
    assign.submit(db, users["ann1"], task.assignment_id, ScreenAnswer(choice="A"))
    with pytest.raises(assign.AlreadySubmitted):
        assign.submit(db, users["ann1"], task.assignment_id, ScreenAnswer(choice="B"))
    skipped = assign.lease_next(db, users["ann1"], lease_seconds=LEASE)
    assign.skip(db, users["ann1"], skipped.assignment_id)
    assert assign.lease_next(db, users["ann1"], lease_seconds=LEASE) is None  # skipped item not offered again
    assert assign.lease_next(db, users["ann2"], lease_seconds=LEASE).prompt == skipped.prompt  # slot is free
    with db.read() as conn:
        rows = conn.execute(sa.select(t.judgments.c.ranking)).scalars().all()
    assert len(rows) == 1  # the second submit stored nothing


def test_presented_order_is_random_per_assignment_and_results_are_canonical(tmp_path):
    rows = pair_rows(40)
    url = seeded_db(tmp_path, rows, overlap=1)
    db, users = _open(url)
    orders = Counter()
    while (task := assign.lease_next(db, users["ann1"], lease_seconds=LEASE)) is not None:
        # Always prefer the canonical first response, wherever it is shown.
        slot = task.responses.index(next(r for r in task.responses if r.startswith("First")))
        orders[slot] += 1
        assign.submit(db, users["ann1"], task.assignment_id, ScreenAnswer(choice="AB"[slot]))
    assert orders[0] > 5 and orders[1] > 5  # both screen orders occur (P(fail) ~ 1e-6)
    with db.read() as conn:
        rankings = conn.execute(sa.select(t.judgments.c.ranking)).scalars().all()
    assert rankings == [[0, 1]] * 40  # canonical, never screen order


def test_gold_items_are_mixed_in_not_served_last_or_first(tmp_path):
    rows = pair_rows(30) + [{**r, "gold": {"best": 0}} for r in pair_rows(10, "g")]
    url = seeded_db(tmp_path, rows, overlap=1)
    db, users = _open(url)
    positions = []
    i = 0
    while (task := assign.lease_next(db, users["ann1"], lease_seconds=LEASE)) is not None:
        if task.prompt.startswith("Question g"):
            positions.append(i)
        assign.submit(db, users["ann1"], task.assignment_id, ScreenAnswer(choice="A"))
        i += 1
    assert len(positions) == 10
    assert min(positions) < 30 and max(positions) >= 10  # not all at the end, not all at the start
