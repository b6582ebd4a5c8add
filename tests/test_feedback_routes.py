"""Every route x every role, sessions and login: HTTP-level with the ASGI test client."""

from __future__ import annotations

import pytest
from feedback_helpers import (  # noqa: F401  (fast_scrypt is an autouse fixture)
    PASSWORDS,
    api_login,
    api_next,
    csrf_of,
    fast_scrypt,
    make_client,
    pair_rows,
    seeded_db,
    web_login,
)

from rlhfkit.feedback import auth, commands
from rlhfkit.feedback.security import CONTENT_SECURITY_POLICY

A = "ASSIGNMENT"  # placeholder replaced by a real assignment id of the acting user
# (method, path, area): area "web" / "admin" are pages, "api" / "api_admin" JSON, "public" open to all.
ROUTES = [
    ("GET", "/", "public"), ("GET", "/login", "public"), ("POST", "/login", "public"),
    ("GET", "/healthz", "public"), ("GET", "/static/style.css", "public"), ("POST", "/api/login", "public"),
    ("POST", "/logout", "web"), ("GET", "/annotate", "web"), ("POST", "/annotate/next", "web"),
    ("GET", f"/annotate/{A}", "web"), ("POST", f"/annotate/{A}", "web"), ("POST", f"/annotate/{A}/skip", "web"),
    ("GET", "/admin", "admin"), ("GET", "/admin/users", "admin"), ("POST", "/admin/users", "admin"),
    ("POST", "/admin/users/ann2/active", "admin"), ("GET", "/admin/import", "admin"),
    ("POST", "/admin/import", "admin"), ("GET", "/admin/stats", "admin"), ("GET", "/admin/stats.json", "admin"),
    ("GET", "/admin/export", "admin"), ("POST", "/admin/export", "admin"),
    ("GET", "/admin/export/judgments.csv", "admin"),
    ("POST", "/api/logout", "api"), ("GET", "/api/me", "api"), ("POST", "/api/next", "api"),
    ("GET", f"/api/assignments/{A}", "api"), ("POST", f"/api/assignments/{A}", "api"),
    ("POST", f"/api/assignments/{A}/skip", "api"), ("GET", "/api/stats", "api_admin"),
]


@pytest.fixture
def url(tmp_path):
    return seeded_db(tmp_path, pair_rows(6), overlap=3)


def _flat_routes(routes):
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps included routers nested
        yield from _flat_routes(included.routes) if included is not None else [route]


def test_route_table_covers_every_route_of_the_app(url):
    client = make_client(url)
    served = set()
    for route in _flat_routes(client.app.routes):
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                served.add((method, route.path.replace("{assignment_id}", A).replace("{name}", "ann2")))
    listed = {(m, p) for m, p, _ in ROUTES if not p.startswith("/static/")}
    assert served == listed


def _request(client, method, path, csrf="", admin_form=None):
    if method == "GET":
        return client.get(path, follow_redirects=False)
    if path.startswith("/api/"):
        return client.post(path, json={"choice": "A"}, headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    if path == "/admin/import":
        return client.post(path, data={"csrf_token": csrf, "overlap": "1"}, follow_redirects=False,
                           files={"file": ("c.jsonl", b'{"prompt": "new", "responses": ["a", "b"]}\n')})
    data = {"csrf_token": csrf, "choice": "A", **(admin_form or {})}
    return client.post(path, data=data, follow_redirects=False)


@pytest.mark.parametrize("method,path,area", [r for r in ROUTES if r[2] != "public"])
def test_anonymous_is_redirected_or_401(url, method, path, area):
    client = make_client(url)
    response = _request(client, method, path.replace(A, "x"))
    if area.startswith("api"):
        assert response.status_code == 401
        assert response.json()["detail"]
    else:
        assert response.status_code == 303 and response.headers["location"] == "/login"


@pytest.mark.parametrize("method,path,area", [r for r in ROUTES if r[2] in ("admin", "api_admin")])
def test_annotator_is_forbidden_on_admin_routes(url, method, path, area):
    client = make_client(url)
    csrf = api_login(client, "ann1") if area == "api_admin" else web_login(client, "ann1")
    response = _request(client, method, path, csrf, {"name": "mallory", "role": "admin",
                                                     "password": "mallory-password", "active": "0"})
    assert response.status_code == 403
    users = [u.name for u in auth.list_users(client.app.state.db)]
    assert "mallory" not in users and len(users) == 3  # the forbidden POST changed nothing


@pytest.mark.parametrize("method,path,area", [r for r in ROUTES if r[2] in ("admin", "api_admin")])
def test_admin_is_allowed_on_admin_routes(tmp_path, url, method, path, area):
    client = make_client(url, export_dir=tmp_path / "export")
    csrf = api_login(client, "admin") if area == "api_admin" else web_login(client, "admin")
    form = {"name": "newbie", "role": "annotator", "password": "newbie-password", "active": "0", "min_votes": "1"}
    response = _request(client, method, path, csrf, form)
    assert response.status_code in (200, 303), response.text
    if path == "/admin/export" and method == "POST":
        assert (tmp_path / "export" / "manifest.json").is_file()


@pytest.mark.parametrize("method,path,area", [r for r in ROUTES if r[2] in ("web", "api")])
def test_annotator_and_admin_may_use_their_own_queue(url, method, path, area):
    for name in ("ann1", "admin"):
        client = make_client(url)
        csrf = api_login(client, name) if area == "api" else web_login(client, name)
        task = api_next(client, csrf) if area == "api" else None
        if area == "web":
            client.post("/annotate/next", data={"csrf_token": csrf}, follow_redirects=False)
            task = {"assignment_id": client.get("/annotate", follow_redirects=False).headers["location"].rsplit("/")[-1]}
        response = _request(client, method, path.replace(A, task["assignment_id"]), csrf)
        assert response.status_code in (200, 303), (name, response.status_code, response.text)


def test_public_routes(url):
    client = make_client(url)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert "text/css" in client.get("/static/style.css").headers["content-type"]
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_security_headers_on_every_kind_of_response(url):
    client = make_client(url)
    responses = [client.get("/login"), client.get("/nope"), client.get("/api/me"), client.get("/static/style.css"),
                 client.get("/", follow_redirects=False),
                 client.post("/api/login", content=b"x" * 300_000, headers={"content-type": "application/json"})]
    for response in responses:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src" not in CONTENT_SECURITY_POLICY or "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert responses[0].headers["cache-control"] == "no-store"
    assert "<script" not in responses[0].text and "style=" not in responses[0].text  # nothing inline


def test_session_cookie_flags_and_logout(url):
    client = make_client(url)
    page = client.get("/login")
    response = client.post("/login", data={"name": "ann1", "password": PASSWORDS["ann1"],
                                           "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("rlhfkit_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    old = client.cookies.get("rlhfkit_session")
    csrf = csrf_of(client.get("/annotate").text)
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    client.cookies.set("rlhfkit_session", old)
    assert client.get("/annotate", follow_redirects=False).status_code == 303  # the old token is dead

    secure = make_client(url, https=True, secure_cookies=True)
    page = secure.get("/login")
    response = secure.post("/login", data={"name": "ann1", "password": PASSWORDS["ann1"],
                                           "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    cookie = next(c for c in response.headers.get_list("set-cookie") if "rlhfkit_session=" in c)
    assert cookie.startswith("__Host-rlhfkit_session=") and "Secure" in cookie and "Path=/" in cookie


def test_wrong_password_and_rate_limit(url):
    client = make_client(url, login_max_failures=3)
    for _ in range(3):
        response = client.post("/api/login", json={"name": "ann1", "password": "wrong-password!"})
        assert response.status_code == 401
    response = client.post("/api/login", json={"name": "ann1", "password": PASSWORDS["ann1"]})
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0  # even the right one
    assert client.post("/api/login", json={"name": "ann2", "password": PASSWORDS["ann2"]}).status_code == 200
    unknown = client.post("/api/login", json={"name": "nobody", "password": "whatever-pw"})
    assert unknown.status_code == 401 and unknown.json()["detail"] == "Wrong user name or password."


def test_no_default_credentials_and_no_signup(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert commands.init_db(url) is True and commands.init_db(url) is False
    client = make_client(url)
    for name, password in (("admin", "admin"), ("admin", "password"), ("root", "root")):
        assert client.post("/api/login", json={"name": name, "password": password}).status_code == 401
    assert client.get("/signup").status_code == 404 and client.get("/register").status_code == 404
    with pytest.raises(ValueError, match="at least 10"):
        commands.create_user(url, "weak", "admin", "short")
    for blank in (" " * 10, "\t" * 12, "  short   "):  # spaces are not a password
        with pytest.raises(ValueError, match="at least 10"):
            commands.create_user(url, "blank", "annotator", blank)
    commands.create_user(url, "spaced", "annotator", "a pass phrase with spaces")  # inner spaces count
    with pytest.raises(ValueError, match="Role"):
        commands.create_user(url, "someone", "superuser", "long-enough-pw")


def test_deactivated_user_loses_session(url):
    client = make_client(url)
    csrf = api_login(client, "ann1")
    commands.set_user_active(url, "ann1", False)
    assert client.post("/api/next", json={}, headers={"X-CSRF-Token": csrf}).status_code == 401


def test_host_header_checked_when_configured(url):
    client = make_client(url, allowed_hosts=("127.0.0.1", "localhost"))
    assert client.get("/login", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/login", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_a_rank_item_of_more_than_nine_responses_in_an_older_database_still_renders(tmp_path, monkeypatch):
    from rlhfkit.feedback import importer

    monkeypatch.setattr(importer, "MAX_RANK_K", 12)  # as an rlhfkit without the 3-9 bound imported it
    url = seeded_db(tmp_path, [{"prompt": "rank these", "responses": [f"answer {i}" for i in range(10)]}],
                    overlap=1)
    client = make_client(url)
    csrf = web_login(client, "ann1")
    page = client.post("/annotate/next", data={"csrf_token": csrf}, follow_redirects=True)
    assert page.status_code == 200 and "Response J" in page.text  # was HTTP 500 (letters A-I only)
