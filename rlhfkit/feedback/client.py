"""A small HTTP client of the app's JSON API (standard library only).

The world's simulated annotators and `rlhfkit iterate` use it exactly as a person uses the
pages: log in, ask for the next item, answer it in screen terms, repeat::

    client = FeedbackClient("http://127.0.0.1:8000")
    client.login("ann1", "a long password")
    while (task := client.next_task()) is not None:
        client.submit(task.assignment_id, choice="A")      # or ranking=[...], response="..."

One client holds one session; use one client per thread.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


class FeedbackHTTPError(RuntimeError):
    """A refused request: `status` is the HTTP status (401, 403, 404, 409, 410, 422, 429...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ClientTask:
    """One leased item as the annotator sees it (responses in screen order)."""

    assignment_id: str
    kind: str  # "pair" | "rank" | "demo" | "thumbs"
    prompt: str
    responses: list[str]
    expires_at: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientTask:
        return cls(data["assignment_id"], data["kind"], data["prompt"], list(data["responses"]),
                   float(data["expires_at"]))


class FeedbackClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.csrf_token: str | None = None
        self.user: dict[str, str] | None = None
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if method == "POST":
            data = json.dumps(body or {}).encode("utf-8")
            headers["Content-Type"] = "application/json"
            if self.csrf_token:
                headers["X-CSRF-Token"] = self.csrf_token
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            raw = err.read().decode("utf-8", errors="replace")
            try:
                detail = json.loads(raw).get("detail", raw)
            except (json.JSONDecodeError, AttributeError):
                detail = raw
            raise FeedbackHTTPError(err.code, str(detail)) from None

    def login(self, name: str, password: str) -> dict[str, str]:
        reply = self._request("POST", "/api/login", {"name": name, "password": password})
        self.csrf_token = reply["csrf_token"]
        self.user = reply["user"]
        return reply["user"]

    def logout(self) -> None:
        self._request("POST", "/api/logout")
        self.csrf_token = None
        self.user = None

    def next_task(self) -> ClientTask | None:
        """Lease the next item (or get back the one already leased); None when nothing is left."""
        task = self._request("POST", "/api/next")["task"]
        return ClientTask.from_json(task) if task else None

    def get_task(self, assignment_id: str) -> tuple[ClientTask, str]:
        reply = self._request("GET", f"/api/assignments/{quote(assignment_id, safe='')}")
        return ClientTask.from_json(reply["task"]), reply["status"]

    def submit(self, assignment_id: str, *, choice: str | None = None, ranking: list[int] | None = None,
               response: str | None = None, flags: dict[int, list[str]] | None = None, note: str = "") -> int:
        """Answer in screen terms: pair `choice` A/B/tie/both_bad, thumbs `choice` up/down, rank `ranking`
        (screen slots best first), demo `response`. Returns the judgment id; FeedbackHTTPError 409 on a second submit."""
        body: dict[str, Any] = {"note": note, "flags": {str(k): v for k, v in (flags or {}).items()}}
        for key, value in (("choice", choice), ("ranking", ranking), ("response", response)):
            if value is not None:
                body[key] = value
        path = f"/api/assignments/{quote(assignment_id, safe='')}"
        return int(self._request("POST", path, body)["judgment_id"])

    def skip(self, assignment_id: str) -> None:
        self._request("POST", f"/api/assignments/{quote(assignment_id, safe='')}/skip")

    def stats(self) -> dict[str, Any]:
        """The admin statistics (admins only)."""
        return self._request("GET", "/api/stats")
