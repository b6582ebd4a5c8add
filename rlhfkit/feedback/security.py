"""Password hashing, tokens, and the ASGI middlewares that guard every response.

- Passwords: scrypt (hashlib, RFC 7914) with a random 16-byte salt; the parameters are
  stored with each hash so they can be raised later without invalidating old ones.
- Tokens: 256-bit random strings; compared with `hmac.compare_digest` (constant time).
- Every response carries a strict Content-Security-Policy (no inline script or style,
  nothing from other origins, no framing) and the usual hardening headers.
- Request bodies above a limit are refused with 413 before the route reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCRYPT_LOG2_N = 15  # N = 32768, r = 8: ~32 MiB and tens of milliseconds per hash
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_CHARS = 10

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=32
    )


def hash_password(password: str, *, log2_n: int | None = None) -> str:
    """`scrypt$log2N$r$p$salt$hash` (hex), from a fresh random salt; cost N = 2**log2_n (default SCRYPT_LOG2_N)."""
    log2_n = SCRYPT_LOG2_N if log2_n is None else log2_n
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, log2_n, SCRYPT_R, SCRYPT_P)
    return f"scrypt${log2_n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string; False if malformed."""
    try:
        scheme, log2_n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = _scrypt(password, bytes.fromhex(salt_hex), int(log2_n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, bytes.fromhex(digest_hex))


_DUMMY_HASH: list[str] = []


def burn_password_check(password: str) -> None:
    """Spend the time of one real check, so an unknown user name is not revealed by a fast reply."""
    if not _DUMMY_HASH or not _DUMMY_HASH[0].startswith(f"scrypt${SCRYPT_LOG2_N}$"):
        _DUMMY_HASH[:] = [hash_password(secrets.token_hex(8))]
    verify_password(password, _DUMMY_HASH[0])


def password_problem(name: str, password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password.strip()) < MIN_PASSWORD_CHARS:  # ten spaces are not a password
        return (f"the password must have at least {MIN_PASSWORD_CHARS} characters, not counting leading "
                "or trailing spaces")
    if password.strip().lower() == name.strip().lower():
        return "the password must differ from the user name"
    if "\x00" in password:
        return "the password must not contain NUL"
    return None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two tokens; a missing or empty one never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


class SecurityHeadersMiddleware:
    """Adds the CSP and hardening headers to every HTTP response; `no-store` except static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower()
                           not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Refuses bodies larger than a limit with 413: by Content-Length up front, else while streaming.

    `limits` maps a path prefix to its own limit (the import upload); other paths get `default`.
    """

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.limits = limits or {}

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits.items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _plain_response(send, 400, "Bad Content-Length header.")
                    return
                if declared > limit:
                    await _plain_response(send, 413, f"Request body too large (limit {limit} bytes).")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"Request body too large (limit {limit} bytes).")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as err:
            if err.status_code != 413 or started:
                raise
            await _plain_response(send, 413, str(err.detail))


async def _plain_response(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
