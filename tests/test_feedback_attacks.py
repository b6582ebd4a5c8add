"""The bad inputs and attacks of FEEDBACK_APP.md, each through HTTP."""

from __future__ import annotations

import re

import sqlalchemy as sa
from feedback_helpers import (  # noqa: F401  (fast_scrypt is an autouse fixture)
    FakeClock,
    api_login,
    api_next,
    api_submit,
    csrf_of,
    fast_scrypt,
    make_client,
    pair_rows,
    seeded_db,
    web_login,
)

from rlhfkit.feedback import schema as t

XSS = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">']


def _judgments(client) -> list[sa.Row]:
    with client.app.state.db.read() as conn:
        return conn.execute(sa.select(t.judgments)).all()


def _web_lease(client, csrf) -> tuple[str, str]:
    response = client.post("/annotate/next", data={"csrf_token": csrf}, follow_redirects=False)
    location = response.headers["location"]
    return location.rsplit("/", 1)[-1], client.get(location).text


def test_xss_payloads_are_shown_as_escaped_text(tmp_path):
    rows = [{"prompt": XSS[0], "responses": XSS},
            {"prompt": "rank " + XSS[1], "responses": [*XSS, "<b>bold</b>"]}]
    url = seeded_db(tmp_path, rows, overlap=1)
    client = make_client(url)
    csrf = web_login(client, "ann1")
    pages = []
    for _ in range(2):
        assignment, page = _web_lease(client, csrf)
        pages.append(page)
        data = {"csrf_token": csrf, "choice": "A"} if 'name="choice"' in page else {
            "csrf_token": csrf, "rank_0": "1", "rank_1": "2", "rank_2": "3"}
        assert client.post(f"/annotate/{assignment}", data=data, follow_redirects=False).status_code == 303
    for page in pages:
        assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>bold" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in pages[0] + pages[1]


def test_xss_in_import_problems_and_user_names_is_escaped(tmp_path):
    url = seeded_db(tmp_path)
    client = make_client(url)
    csrf = web_login(client, "admin")
    bad = b'{"prompt": "p", "responses": ["a", "b"], "<script>x</script>": 1}\n'
    response = client.post("/admin/import", data={"csrf_token": csrf, "overlap": "2"},
                           files={"file": ("<img onerror=1>.jsonl", bad)})
    assert response.status_code == 422
    assert "<script>" not in response.text and "<img" not in response.text
    assert "&lt;script&gt;" in response.text
    created = client.post("/admin/users", data={"csrf_token": csrf, "name": "<script>", "role": "annotator",
                                                "password": "long-enough-pw"})
    assert created.status_code == 422 and "<script>" not in created.text


def test_bidi_characters_are_shown_as_visible_markers(tmp_path):
    url = seeded_db(tmp_path, [{"prompt": "p", "responses": ["abc\u202edef", "zero\u200bwidth"]}], overlap=1)
    client = make_client(url)
    _, page = _web_lease(client, web_login(client, "ann1"))
    assert "\u202e" not in page and "\u200b" not in page
    assert "⟦U+202E⟧" in page and "⟦U+200B⟧" in page


def test_another_annotators_assignment_is_refused(tmp_path):
    url = seeded_db(tmp_path, pair_rows(3))
    owner, intruder = make_client(url), make_client(url)
    assignment, _ = _web_lease(owner, web_login(owner, "ann1"))
    csrf = web_login(intruder, "ann2")
    assert intruder.get(f"/annotate/{assignment}").status_code == 404
    assert intruder.post(f"/annotate/{assignment}", data={"csrf_token": csrf, "choice": "A"}).status_code == 404
    assert intruder.post(f"/annotate/{assignment}/skip", data={"csrf_token": csrf}).status_code == 404
    api_csrf = api_login(intruder, "ann2")
    assert intruder.get(f"/api/assignments/{assignment}").status_code == 404
    assert api_submit(intruder, api_csrf, assignment, choice="A").status_code == 404
    assert _judgments(owner) == []


def test_double_submit_is_refused_with_409_and_stored_once(tmp_path):
    url = seeded_db(tmp_path, pair_rows(1), overlap=1)
    client = make_client(url)
    csrf = web_login(client, "ann1")
    assignment, _ = _web_lease(client, csrf)
    data = {"csrf_token": csrf, "choice": "A"}
    assert client.post(f"/annotate/{assignment}", data=data, follow_redirects=False).status_code == 303
    assert client.post(f"/annotate/{assignment}", data={**data, "choice": "B"}).status_code == 409
    api_csrf = api_login(client, "ann1")
    assert api_submit(client, api_csrf, assignment, choice="B").status_code == 409
    (judgment,) = _judgments(client)
    assert judgment.assignment_id == assignment


def test_posts_without_or_with_a_wrong_csrf_token_are_refused(tmp_path):
    url = seeded_db(tmp_path, pair_rows(2))
    client = make_client(url)
    csrf = web_login(client, "ann1")
    assert client.post("/annotate/next", data={}).status_code == 403
    assert client.post("/annotate/next", data={"csrf_token": "x" * len(csrf)}).status_code == 403
    assert client.get("/annotate", follow_redirects=False).status_code == 200  # nothing was leased
    assert client.post("/logout", data={}).status_code == 403
    # API: the header is required; a cross-site form cannot send JSON, so a form body is refused.
    api_csrf = api_login(client, "ann1")
    assert client.post("/api/next", json={}).status_code == 403
    assert client.post("/api/next", json={}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post("/api/next", data={"a": "b"}, headers={"X-CSRF-Token": api_csrf}).status_code == 415
    assert client.post("/api/login", data={"name": "ann1", "password": "x"}).status_code == 415
    # The login form is protected by a double-submit cookie.
    fresh = make_client(url)
    token = csrf_of(fresh.get("/login").text)
    fresh.cookies.clear()
    assert fresh.post("/login", data={"name": "ann1", "password": "ann1-secret-pw",
                                      "csrf_token": token}).status_code == 403
    admin = make_client(url)
    admin_csrf = web_login(admin, "admin")
    refused = admin.post("/admin/import", data={"overlap": "1"},
                         files={"file": ("c.jsonl", b'{"prompt": "q", "responses": ["a", "b"]}\n')})
    assert refused.status_code == 403
    assert admin.post("/admin/users", data={"name": "x1", "role": "admin", "password": "long-enough-pw",
                                            "csrf_token": admin_csrf[:-1]}).status_code == 403


def test_oversized_bodies_are_refused_with_413(tmp_path):
    url = seeded_db(tmp_path, pair_rows(1))
    client = make_client(url, max_body_bytes=4096)
    csrf = web_login(client, "ann1")
    big = {"csrf_token": csrf, "note": "x" * 10_000}
    assert client.post("/annotate/next", data=big).status_code == 413
    assert client.post("/api/login", content=b"{" + b" " * 10_000 + b"}",
                       headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b"a" * 1000

    streamed = client.post("/api/login", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/annotate", follow_redirects=False).status_code == 200  # still alive, nothing leased


def test_non_permutation_ranking_and_unknown_choice_are_refused(tmp_path):
    rows = [{"prompt": "rank me", "responses": ["a", "b", "c"]}, *pair_rows(1)]
    url = seeded_db(tmp_path, rows, overlap=1)
    client = make_client(url)
    csrf = api_login(client, "ann1")
    task = api_next(client, csrf)
    bad = {"rank": [{"ranking": [0, 0, 1]}, {"ranking": [0, 1]}, {"ranking": [0, 1, 5]}, {"ranking": "012"}],
           "pair": [{"choice": "C"}, {"choice": "a"}, {}, {"choice": ["A"]}]}[task["kind"]]
    for answer in bad:
        response = api_submit(client, csrf, task["assignment_id"], **answer)
        assert response.status_code == 422, answer
    web_csrf = csrf  # one session, one token, for the pages and the API
    page = client.get(f"/annotate/{task['assignment_id']}")
    form = ({"rank_0": "1", "rank_1": "1", "rank_2": "3"} if task["kind"] == "rank" else {"choice": "maybe"})
    response = client.post(f"/annotate/{task['assignment_id']}", data={"csrf_token": web_csrf, **form})
    assert response.status_code == 422 and "Not saved" in response.text and page.status_code == 200
    assert _judgments(client) == []
    assert api_submit(client, csrf, task["assignment_id"], flags={"0": ["bogus"]}, choice="A",
                      ranking=[0, 1, 2]).status_code == 422


def test_expired_lease_handling_over_http(tmp_path):
    url = seeded_db(tmp_path, pair_rows(1), overlap=1)
    clock = FakeClock()
    slow, fast = make_client(url, clock, lease_seconds=60), make_client(url, clock, lease_seconds=60)
    slow_csrf, fast_csrf = api_login(slow, "ann1"), api_login(fast, "ann2")
    stale = api_next(slow, slow_csrf)
    assert api_next(fast, fast_csrf) is None  # the only slot is leased
    clock.advance(61)
    assert slow.get(f"/api/assignments/{stale['assignment_id']}").json()["status"] == "expired"
    fresh = api_next(fast, fast_csrf)
    assert fresh is not None and fresh["prompt"] == stale["prompt"]
    assert api_submit(fast, fast_csrf, fresh["assignment_id"], choice="A").status_code == 200
    late = api_submit(slow, slow_csrf, stale["assignment_id"], choice="B")
    assert late.status_code == 410 and len(_judgments(fast)) == 1


def test_nul_and_invalid_utf8_in_requests_are_refused(tmp_path):
    url = seeded_db(tmp_path, pair_rows(1), overlap=1)
    client = make_client(url)
    csrf = web_login(client, "ann1")
    assignment, _ = _web_lease(client, csrf)
    form = "application/x-www-form-urlencoded"
    for body in (f"csrf_token={csrf}&choice=A&note=a%00b", f"csrf_token={csrf}&choice=A&note=%FF%FE"):
        response = client.post(f"/annotate/{assignment}", content=body.encode(), headers={"content-type": form})
        assert response.status_code == 400
    api_csrf = api_login(client, "ann1")
    headers = {"X-CSRF-Token": api_csrf, "content-type": "application/json"}
    assert client.post(f"/api/assignments/{assignment}", content=b'{"choice": "A", "note": "\\u0000"}',
                       headers=headers).status_code == 400
    assert client.post(f"/api/assignments/{assignment}", content=b'{"choice": "A", "note": "\xff"}',
                       headers=headers).status_code == 400
    assert _judgments(client) == []


def test_sql_injection_looking_answers_are_stored_verbatim(tmp_path):
    url = seeded_db(tmp_path, [{"prompt": "write", "kind": "demo"}], overlap=1)
    client = make_client(url)
    csrf = api_login(client, "ann1")
    task = api_next(client, csrf)
    evil = "'); DELETE FROM judgments; -- \" OR ''='"
    assert api_submit(client, csrf, task["assignment_id"], response=evil, note=evil).status_code == 200
    (judgment,) = _judgments(client)
    assert judgment.response_text == evil and judgment.note == evil


def test_gold_items_are_not_marked_in_the_page(tmp_path):
    rows = [{"id": "gold-1", "prompt": "First question?", "responses": ["Alpha reply", "Beta reply"],
             "gold": {"best": 0}},
            {"id": "plain-1", "prompt": "Second question?", "responses": ["Gamma reply", "Delta reply"]}]
    url = seeded_db(tmp_path, rows, overlap=1)
    client = make_client(url)
    csrf = web_login(client, "ann1")
    pages, tasks = {}, {}
    api_csrf = api_login(client, "ann1")
    for _ in range(2):
        task = api_next(client, api_csrf)
        pages[task["prompt"]] = client.get(f"/annotate/{task['assignment_id']}").text
        tasks[task["prompt"]] = task
        assert api_submit(client, api_csrf, task["assignment_id"], choice="A").status_code == 200
    assert csrf and set(tasks["First question?"]) == set(tasks["Second question?"])

    def skeleton(page, task):
        page = page.replace(task["assignment_id"], "ID").replace(task["prompt"], "PROMPT")
        for i, text in enumerate(task["responses"]):
            page = page.replace(text, f"RESPONSE{i}")
        return re.sub(r'name="csrf_token" value="[^"]+"', "", page)

    gold_page, plain_page = pages["First question?"], pages["Second question?"]
    assert "gold" not in gold_page.lower()
    assert skeleton(gold_page, tasks["First question?"]) == skeleton(plain_page, tasks["Second question?"])
