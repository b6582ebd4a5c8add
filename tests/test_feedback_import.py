"""Import validation (file + line + field per problem, all-or-nothing) and the untrusted-text policy."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from feedback_helpers import fast_scrypt, seeded_db, write_jsonl  # noqa: F401  (fast_scrypt: autouse fixture)

from rlhfkit.feedback import commands
from rlhfkit.feedback import schema as t
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.importer import ImportValidationError, parse_candidates
from rlhfkit.feedback.textcheck import TextError, check_text, invisible_characters, reveal_invisible


def _items(url: str) -> list[sa.Row]:
    db = Database.open(url)
    try:
        with db.read() as conn:
            return conn.execute(sa.select(t.items).order_by(t.items.c.id)).all()
    finally:
        db.dispose()


def test_valid_rows_import_with_inferred_kinds(tmp_path):
    url = seeded_db(tmp_path)
    rows = [{"prompt": "p1", "responses": ["a", "b"]}, {"prompt": "p2", "responses": ["a", "b", "c"]},
            {"prompt": "p3"}, {"prompt": "p4", "responses": ["x", "y"], "kind": "pair", "gold": {"best": 1},
                               "id": 7}]
    report = commands.import_items(url, write_jsonl(tmp_path / "c.jsonl", rows), overlap=3)
    assert report.imported == 4 and report.by_kind == {"pair": 2, "rank": 1, "demo": 1} and report.gold == 1
    items = _items(url)
    assert [i.kind for i in items] == ["pair", "rank", "demo", "pair"]
    assert [i.overlap for i in items] == [3, 3, 3, 3]
    assert items[3].external_id == "7" and items[3].gold == {"best": 1}


def test_every_bad_row_is_reported_with_file_line_and_field_and_nothing_is_imported(tmp_path):
    url = seeded_db(tmp_path)
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "fine", "responses": ["a", "b"]})
    lines = [
        good.encode(),                                                        # 1 ok
        b'{"prompt": "nul\x00", "responses": ["a", "b"]}',                    # 2 raw NUL byte
        b'{"prompt": "bad \xff utf8", "responses": ["a", "b"]}',              # 3 invalid UTF-8
        json.dumps({"prompt": "p", "responses": ["a\u0000b", "c"]}).encode(),  # 4 escaped NUL in a field
        json.dumps({"prompt": "", "responses": ["a", "b"]}).encode(),         # 5 empty prompt
        json.dumps({"prompt": "p5", "responses": ["same", "same"]}).encode(),  # 6 identical responses
        json.dumps({"prompt": "p6", "responses": ["only one"]}).encode(),     # 7 one response
        json.dumps({"prompt": "p7", "responses": ["a", "b"], "kind": "rank"}).encode(),  # 8 rank of 2
        json.dumps({"prompt": "p8", "responses": ["a", "b"], "gold": {"best": 5}}).encode(),  # 9 gold range
        b"{not json",                                                         # 10
        json.dumps({"prompt": "p9", "respones": ["a", "b"]}).encode(),        # 11 typo key
        good.encode(),                                                        # 12 duplicate of line 1
        json.dumps({"prompt": "p10", "responses": ["a", "b", "c"], "gold": {"ranking": [0, 0, 1]}}).encode(),
        json.dumps({"prompt": "p11", "responses": [f"r{i}" for i in range(10)]}).encode(),  # 14 rank of 10, no kind
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ImportValidationError) as info:
        commands.import_items(url, path)
    problems = info.value.problems
    expected = [
        (2, "(row)", "NUL byte"), (3, "(row)", "not valid UTF-8"), (4, "responses[0]", "NUL"),
        (5, "prompt", "empty"), (6, "responses[1]", "identical to responses[0]"), (7, "responses", "single"),
        (8, "kind", "3 to 9"), (9, "gold", "index"), (10, "(row)", "not valid JSON"), (11, "'respones'", "not a known key"),
        (12, "(row)", "duplicates line 1"), (13, "gold", "permutation"), (14, "responses", "3 to 9"),
    ]
    for line, field, words in expected:
        assert any(p.startswith(f"{path}, line {line}, field {field}:") and words in p for p in problems), (
            line, field, problems)
    assert all(p.endswith(".") and p.count(f"{path}, line") == 1 for p in problems)  # one sentence each
    assert _items(url) == []  # nothing imported although line 1 was fine


def test_duplicates_against_the_database_refused_or_skipped(tmp_path):
    rows = [{"id": "a", "prompt": "p", "responses": ["x", "y"]}]
    url = seeded_db(tmp_path, rows)
    again = write_jsonl(tmp_path / "again.jsonl", [{"id": "b", "prompt": "p", "responses": ["x", "y"]},
                                                   {"id": "a", "prompt": "other", "responses": ["x", "y"]},
                                                   {"id": "c", "prompt": "new", "responses": ["x", "y"]}])
    with pytest.raises(ImportValidationError) as info:
        commands.import_items(url, again)
    assert len(info.value.problems) == 2
    assert "line 1, field (row): an item with the same kind" in info.value.problems[0]
    assert "line 2, field id: an item with id 'a'" in info.value.problems[1]
    assert len(_items(url)) == 1
    report = commands.import_items(url, again, on_duplicate="skip")
    assert report.imported == 1 and len(report.skipped_duplicates) == 2
    assert [i.external_id for i in _items(url)] == ["a", "c"]


def test_sql_injection_looking_text_is_stored_verbatim(tmp_path):
    evil = "Robert'); DROP TABLE items;-- \" OR 1=1 --"
    url = seeded_db(tmp_path, [{"id": evil[:40], "prompt": evil, "responses": [evil, "x' OR 'a'='a"]}])
    (item,) = _items(url)
    assert item.prompt == evil and item.external_id == evil[:40]
    db = Database.open(url)
    with db.read() as conn:
        texts = conn.execute(sa.select(t.responses.c.text).order_by(t.responses.c.position)).scalars().all()
    db.dispose()
    assert texts == [evil, "x' OR 'a'='a"]


def test_bidi_and_zero_width_are_kept_and_reported(tmp_path):
    tricky = "safe\u202etxt.exe and\u200bhidden"
    url = seeded_db(tmp_path)
    report = commands.import_items(url, write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": [tricky, "b"]}]))
    assert len(report.invisible) == 1 and "responses[0]" in report.invisible[0] and "U+202E" in report.invisible[0]
    db = Database.open(url)
    with db.read() as conn:
        assert tricky in conn.execute(sa.select(t.responses.c.text)).scalars().all()  # verbatim
    db.dispose()


def test_text_policy_functions():
    assert check_text("ok") == "ok"
    for bad, words in (("a\x00b", "NUL"), ("   ", "empty"), ("\ud800", "surrogate")):
        with pytest.raises(TextError, match=words):
            check_text(bad)
    with pytest.raises(TextError, match="limit of 3"):
        check_text("abcd", max_chars=3)
    assert invisible_characters("a\u202eb\u200bc\u202e\x07") == ["U+202E", "U+200B", "U+0007"]
    assert invisible_characters("tab\tnewline\n") == []
    shown = str(reveal_invisible("<b>x</b>\u202e&"))
    assert shown.startswith("&lt;b&gt;x&lt;/b&gt;") and "⟦U+202E⟧" in shown and shown.endswith("&amp;")
    assert "\u202e" not in shown


def test_parse_candidates_bom_crlf_and_empty_file():
    raw = b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "responses": ["a", "b"]}).encode() + b"\r\n\r\n"
    candidates, problems, _ = parse_candidates(raw, "f.jsonl")
    assert problems == [] and len(candidates) == 1 and candidates[0].kind == "pair"
    _, problems, _ = parse_candidates(b"\n\n", "f.jsonl")
    assert problems == ["f.jsonl, line 1, field (file): contains no candidates."]
