"""The FastAPI application: middlewares, error pages and the three routers.

Middleware order, outermost first: security headers (so every reply carries the CSP, even
a 413), the Host check (DNS-rebinding guard, when `allowed_hosts` is set), the body size
limit. No API docs pages are served (they would load script from a CDN, which the CSP forbids).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles

from rlhfkit.feedback import routes_admin, routes_api, routes_web
from rlhfkit.feedback.config import AppConfig
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.security import BodySizeLimitMiddleware, SecurityHeadersMiddleware
from rlhfkit.feedback.webutil import STATIC_DIR, LoginRequired, error_response, make_templates


def create_app(config: AppConfig, db: Database | None = None) -> FastAPI:
    """Build the app for `config` (opening and checking its database unless `db` is given)."""
    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.db = db or Database.open(config.db_url)
    app.state.templates = make_templates()

    app.add_middleware(BodySizeLimitMiddleware, default=config.max_body_bytes,
                       limits={"/admin/import": config.max_import_bytes})
    if config.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))
    app.add_middleware(SecurityHeadersMiddleware)  # added last = outermost

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes_web.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_api.router)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _err: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        message = err.detail if isinstance(err.detail, str) else "Request refused."
        if err.status_code == 404 and message == "Not Found":
            message = "There is no such page."
        if err.status_code == 405:
            message = "This page does not accept that method."
        return error_response(request, err.status_code, message, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> Response:
        return error_response(request, 422, "The request is malformed.")

    return app
