"""Request plumbing shared by the HTML and JSON routes: sessions, roles, CSRF, strict body parsing.

Every route states what it needs as a dependency, and the role is checked on the server for
each request: `web_user` / `web_admin` (anonymous -> redirect to /login, wrong role -> 403)
and `api_user` / `api_admin` (anonymous -> 401). State-changing routes also take
`web_form_checked` (the form's `csrf_token` must equal the session's) or `api_json_checked`
(the `X-CSRF-Token` header must), compared in constant time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jinja2
from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from rlhfkit.feedback import auth
from rlhfkit.feedback.config import AppConfig
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.security import tokens_equal
from rlhfkit.feedback.textcheck import reveal_invisible

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
LOGIN_CSRF_COOKIE = "rlhfkit_login_csrf"
MAX_FORM_FIELDS = 200


class LoginRequired(Exception):
    """Raised by web routes for anonymous users; answered with a redirect to /login."""


def session_cookie_name(config: AppConfig) -> str:
    # The __Host- prefix pins the cookie to this host and path "/", and browsers require Secure for it.
    return "__Host-rlhfkit_session" if config.secure_cookies else "rlhfkit_session"


def set_session_cookie(response: Response, config: AppConfig, token: str) -> None:
    response.set_cookie(session_cookie_name(config), token, httponly=True, samesite="strict",
                        secure=config.secure_cookies, path="/", max_age=int(config.session_seconds))


def clear_session_cookie(response: Response, config: AppConfig) -> None:
    response.delete_cookie(session_cookie_name(config), path="/", httponly=True, samesite="strict",
                           secure=config.secure_cookies)


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["reveal"] = reveal_invisible
    env.filters["fmt"] = format_number
    return env


def format_number(value: Any, digits: int = 3) -> str:
    """Numbers for tables: None (undefined) shows as a dash, floats rounded, rates as given."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def app_db(request: Request) -> Database:
    return request.app.state.db


def app_config(request: Request) -> AppConfig:
    return request.app.state.config


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_session(request: Request) -> auth.Session | None:
    """The session behind the request's cookie (looked up once per request)."""
    if not hasattr(request.state, "session"):
        token = request.cookies.get(session_cookie_name(app_config(request)))
        request.state.session = auth.session_for_token(app_db(request), token)
    return request.state.session


def web_user(request: Request) -> auth.Session:
    session = current_session(request)
    if session is None:
        raise LoginRequired()
    return session


def web_admin(session: auth.Session = Depends(web_user)) -> auth.Session:
    if not session.user.is_admin:
        raise HTTPException(403, "This page is for admins only.")
    return session


def api_user(request: Request) -> auth.Session:
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "Log in first (POST /api/login).")
    return session


def api_admin(session: auth.Session = Depends(api_user)) -> auth.Session:
    if not session.user.is_admin:
        raise HTTPException(403, "Admins only.")
    return session


@dataclass
class Form:
    """A parsed urlencoded form: every value decoded strictly as UTF-8 and free of NUL."""

    fields: list[tuple[str, str]]

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.fields:
            if key == name:
                return value
        return default

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]


async def read_form(request: Request) -> Form:
    """Parse an `application/x-www-form-urlencoded` body; 415 / 400 on anything else or bad text."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if content_type != "application/x-www-form-urlencoded" and (content_type or body):
        raise HTTPException(415, "Send the form as application/x-www-form-urlencoded.")
    try:
        fields = parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
                           max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise HTTPException(400, "The form data is not valid UTF-8.") from None
    except ValueError:
        raise HTTPException(400, f"The form has more than {MAX_FORM_FIELDS} fields.") from None
    if any("\x00" in key or "\x00" in value for key, value in fields):
        raise HTTPException(400, "The form data contains a NUL character.")
    return Form(fields)


def web_form_checked(session: auth.Session = Depends(web_user), form: Form = Depends(read_form)) -> tuple:
    """(session, form) of a logged-in user whose form carries the session's CSRF token."""
    if not tokens_equal(session.csrf_token, form.get("csrf_token")):
        raise HTTPException(403, "The form's security token is missing or stale; reload the page and retry.")
    return session, form


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


async def read_json(request: Request) -> dict[str, Any]:
    """A JSON object body, decoded strictly; the content type must say JSON (no cross-site simple POST can)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(415, "Send JSON with Content-Type: application/json.")
    body = await request.body()
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}
    except UnicodeDecodeError:
        raise HTTPException(400, "The body is not valid UTF-8.") from None
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"The body is not valid JSON ({err.msg}).") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "The body must be a JSON object.")
    if _has_nul(data):
        raise HTTPException(400, "The body contains a NUL character.")
    return data


def api_json_checked(request: Request, session: auth.Session = Depends(api_user),
                     data: dict = Depends(read_json)) -> tuple:
    """(session, body) of a logged-in API client that sent the session's CSRF token in X-CSRF-Token."""
    if not tokens_equal(session.csrf_token, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "Missing or wrong X-CSRF-Token header.")
    return session, data


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    session = current_session(request) if hasattr(request.state, "session") else None
    env: jinja2.Environment = request.app.state.templates
    html = env.get_template(template).render(
        title=app_config(request).title, session=session, csrf_token=session.csrf_token if session else "",
        **context)
    return HTMLResponse(html, status_code=status_code)


def error_response(request: Request, status_code: int, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """JSON for /api/ paths, an HTML page elsewhere."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status_code, headers=headers)
    response = render(request, "error.html", status_code=status_code, status=status_code, message=message)
    if headers:
        response.headers.update(headers)
    return response
