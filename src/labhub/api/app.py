"""The FastAPI application factory."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labhub import __version__
from labhub.api import callhome, groups, instances, misc, users
from labhub.hub import Hub
from labhub.services.errors import ServiceError

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, self.limit)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail": "request body too large (limit {limit} bytes)"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def create_app(hub: Hub) -> FastAPI:
    """The hub's web application (API and pages) for an already-built :class:`Hub`."""
    app = FastAPI(
        title="LabHub", version=__version__,
        description="Workspaces, jobs and services for a research group. Authenticate with "
                    "`Authorization: Bearer <token>` (create tokens at /tokens or with `labhub token issue`).",
        docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json",
    )
    app.state.hub = hub
    app.include_router(misc.router, prefix="/api/v1")
    app.include_router(instances.router, prefix="/api/v1")
    app.include_router(callhome.router, prefix="/api/v1")
    app.include_router(users.router, prefix="/api/v1")
    app.include_router(users.audit_router, prefix="/api/v1")
    app.include_router(groups.router, prefix="/api/v1")
    from labhub.web import pages

    pages.mount(app)
    from labhub.auth import routes as auth_routes

    auth_routes.mount(app)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Any:
        if _wants_html(request):
            return pages.error_page(request, exc.status, exc.message)
        content: dict[str, Any] = {"detail": exc.message}
        if exc.fields:
            content["fields"] = exc.fields
        return JSONResponse(content, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            fields[".".join(loc) or "body"] = err.get("msg", "invalid")
        detail = "malformed JSON body" if any(e.get("type") == "json_invalid" for e in exc.errors()) else "invalid request"
        return JSONResponse({"detail": detail, "fields": fields}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if _wants_html(request):
            if exc.status_code == 401:
                return pages.login_redirect(request)
            return pages.error_page(request, exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_middleware(BodyLimit, limit=hub.settings.max_body_bytes)
    return app
