"""The FastAPI application factory."""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labhub import __version__
from labhub.api import callhome, extend, instances, jobs, misc, services, shares
from labhub.api.schemas import ErrorOut, error
from labhub.hub import Hub
from labhub.services.errors import Conflict, ServiceError

log = logging.getLogger(__name__)

ERROR_REF = "#/components/schemas/ErrorOut"
SECURITY_SCHEMES = {
    "bearerToken": {"type": "http", "scheme": "bearer",
                    "description": "an API token (the Tokens page, `labhub token issue`, or POST /api/v1/tokens)"},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "labhub_session",
                      "description": "the browser's session; other methods than GET and HEAD must come from the "
                                     "hub's own pages (`Origin`) with the session's token in `X-CSRF-Token` (the "
                                     "`csrf-token` meta tag of every hub page)"},
    "instanceToken": {"type": "http", "scheme": "bearer",
                      "description": "the secret the hub gave one instance (`LABHUB_TOKEN`); "
                                     "it grants nothing but that instance's call-home"},
}


UPLOAD_PATHS = re.compile(r"^(/api/v1/folders/[^/]+/upload|/upload|/folders/[^/]+/upload)$")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed.

    A declared ``Content-Length`` over the limit is answered here.  A body
    without one (chunked, as the proxy forwards what clients stream) is
    counted as the app reads it: the read raises :class:`_TooLarge`, an
    HTTPException, which FastAPI's body parsing lets through (it turns other
    errors into 400 "error parsing the body") and the app's handler answers.
    Anything else that reads the body (the login throttle) is answered here.
    """

    def __init__(self, app: ASGIApp, limit: int, *, uploads: re.Pattern[str] | None = None,
                 upload_limit: int = 0) -> None:
        """``uploads``: paths whose bodies are files, up to ``upload_limit`` (their routes stream
        them to disk and hold the exact limits themselves)."""
        self.app = app
        self.limit = limit
        self.uploads = uploads
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.uploads is not None and scope["method"] in ("POST", "PUT") and self.uploads.match(scope["path"]):
            await type(self)(self.app, self.upload_limit)(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, self.limit)
                return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except _TooLarge:
            if started:
                raise
            await _too_large(send, self.limit)


NUL_MESSAGE = "must not contain NUL characters"


class RefuseNul:
    """Refuse NUL characters in query strings and form bodies with 422 (PostgreSQL's text cannot hold
    them, and no name, search or form field has a use for one).  JSON bodies are checked by
    :class:`~labhub.api.schemas.RequestBody`; multipart bodies may carry files and pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if UPLOAD_PATHS.match(scope["path"]):  # file bodies: any byte is data (`curl --data-binary` says "form")
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if (b"\x00" in query or b"%00" in query.lower()) and not scope["path"].startswith("/api/"):
            # (the API's parameters say so field by field themselves)
            names = [k for k, v in urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                     if "\x00" in k or "\x00" in v] or ["query"]
            await _send_json(send, 422, {"detail": "invalid request",
                                         "fields": {n.replace("\x00", ""): NUL_MESSAGE for n in names}})
            return
        form = any(k == b"content-type" and v.split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded"
                   for k, v in scope["headers"])
        if not form:
            await self.app(scope, receive, send)
            return
        tail = b""

        async def checked() -> Message:
            nonlocal tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = tail + message.get("body", b"")
                if b"\x00" in chunk or b"%00" in chunk.lower():
                    raise _HasNul
                tail = chunk[-2:]  # "%00" split across chunks
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:  # the app's handlers answer it as any HTTPException; a body reader outside them, here
            await self.app(scope, checked, watched)
        except _HasNul:
            if started:
                raise
            await _send_json(send, 422, {"detail": _HasNul.DETAIL, "fields": {"body": NUL_MESSAGE}})


class _HasNul(StarletteHTTPException):
    DETAIL = "form fields must not contain NUL characters"

    def __init__(self) -> None:
        super().__init__(422, self.DETAIL)


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = JSONResponse(content).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))


def _too_large_detail(limit: int) -> str:
    return f"request body too large (limit {limit} bytes)"


async def _too_large(send: Send, limit: int) -> None:
    await _send_json(send, 413, {"detail": _too_large_detail(limit)})


def _wants_html(request: Request) -> bool:
    if getattr(request.state, "json_errors", False):
        return False
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", list)  # FastAPI >= 0.13x nests included routers
    methods: set[str] = set()
    for route in iterate(app.router.routes):
        if route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _error_entry(status: int) -> dict[str, Any]:
    """The OpenAPI response object for an :class:`ErrorOut` answer."""
    entry = dict(error(status)[status])
    entry.pop("model")
    entry["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    return entry


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the generated document say what the app's own machinery answers, for every operation.

    Routers declare their errors (401, 403, 404, 409, 503) with ``responses=``;
    what this module adds to every route is documented here: 413 (BodyLimit),
    415 (a body that is not JSON), and 422 in our shape rather than FastAPI's
    default ``HTTPValidationError``.  Every error is JSON, also where the
    route's success is not (FastAPI would give them the route's media type).
    Operations that answer 401 get the bearer-token and session-cookie
    security schemes.
    """
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ErrorOut", ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error_entry(422)
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:  # JSON whatever the route answers when it succeeds
                    response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
            responses["413"] = _error_entry(413)
            if "requestBody" in operation:
                responses["415"] = _error_entry(415)
            if "401" in responses:
                operation.setdefault("security", [{"bearerToken": []}, {"sessionCookie": []}])
            operation["responses"] = dict(sorted(responses.items()))
    return schema


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app))
        return app.openapi_schema

    return openapi


HOT_PATHS = ("/api/v1/health", "/api/v1/me", "/api/v1/templates", "/api/v1/tokens", "/api/v1/instances")
"""What a hub serves from its start: the API that scripts, the proxy's users and health checks call.  The
admin and group API, the pages, the login routes and the API documentation are built on first use."""


def _hot(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in HOT_PATHS)


class MountOnFirstUse:
    """Build the rest of the application on the first request outside :data:`HOT_PATHS`.

    Importing the pages (Jinja2, five routers) and the admin API and building their routes is a fifth of
    the hub's start and a few MiB; a hub that only answers API calls and health checks never needs them.
    The first page view pays it once (~0.2 s).  Everything is added in one step, before that request is
    routed (one event loop: no request sees half of it)."""

    def __init__(self, app: ASGIApp, mount: Callable[[], None]) -> None:
        self.app = app
        self.mount: Callable[[], None] | None = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.mount is not None and scope["type"] == "http" and not _hot(scope["path"]):
            mount, self.mount = self.mount, None
            mount()
        await self.app(scope, receive, send)


def _mount_the_rest(app: FastAPI, *, guards_installed: bool) -> None:
    """The admin and group API, the pages and the login routes (with the guards, unless installed)."""
    from labhub.api import cleanup, folders, groups, quotas, users

    app.include_router(users.router, prefix="/api/v1")
    app.include_router(users.audit_router, prefix="/api/v1")
    app.include_router(groups.router, prefix="/api/v1")
    app.include_router(quotas.router, prefix="/api/v1")
    app.include_router(shares.shared_router, prefix="/api/v1")
    app.include_router(folders.router, prefix="/api/v1")
    app.include_router(cleanup.router, prefix="/api/v1")
    if app.state.hub.settings.mlaas4hep_routes:
        from labhub.api import mlaas4hep

        app.include_router(mlaas4hep.router)
    from labhub.web import pages

    pages.mount(app)
    from labhub.auth import routes as auth_routes

    if not guards_installed:
        auth_routes.mount(app)
        return
    installed = {m.cls for m in app.user_middleware}

    def add_middleware(cls: Any, *args: Any, **kwargs: Any) -> None:  # auth.routes.mount() installs the guards
        if cls not in installed:
            raise RuntimeError(f"{cls.__name__}: middleware must be added in create_app(), not on first use")

    app.add_middleware = add_middleware  # type: ignore[method-assign]
    try:
        auth_routes.mount(app)
    finally:
        del app.add_middleware


def create_app(hub: Hub, *, lazy: bool = False) -> FastAPI:
    """The hub's web application (API and pages) for an already-built :class:`Hub`.

    ``lazy``: build what is outside :data:`HOT_PATHS` on its first use (``labhub serve`` does); the
    application serves the same either way.
    """
    app = FastAPI(
        title="LabHub", version=__version__,
        description="Workspaces, jobs and services for a research group. Authenticate with "
                    "`Authorization: Bearer <token>` (create tokens at /tokens or with `labhub token issue`). "
                    "Every error answer is JSON: `{\"detail\": \"...\"}`, with `\"fields\"` naming the "
                    "parameters or body fields at fault.",
        docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json",
    )
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.state.hub = hub
    app.include_router(misc.router, prefix="/api/v1")
    app.include_router(instances.router, prefix="/api/v1")
    app.include_router(extend.router, prefix="/api/v1")
    app.include_router(shares.router, prefix="/api/v1")
    app.include_router(callhome.router, prefix="/api/v1")
    app.include_router(jobs.router, prefix="/api/v1")
    app.include_router(services.router, prefix="/api/v1")
    # the rest is built when first needed (lazy) or now; middleware and error handlers are added here either
    # way, since Starlette fixes them when it builds its middleware stack on the first request
    if lazy:
        app.add_middleware(MountOnFirstUse, mount=lambda: _mount_the_rest(app, guards_installed=True))
    else:
        _mount_the_rest(app, guards_installed=False)
    from labhub.auth import guards

    if lazy:
        guards.install(app)  # (auth.routes.mount() installs them when the app is built at once)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        """A friendly 500 for browsers (the error is logged with its traceback by the server); what
        ``labhub.web.pages.mount`` installs, here so that it holds before the pages are mounted."""
        if not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", ""):
            from labhub.web import pages

            return pages.error_page(request, 500, "Something unexpected went wrong on the hub.")
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Any:
        if _wants_html(request):
            from labhub.web import pages

            response = pages.error_page(request, exc.status, exc.message)
            response.headers.update(exc.headers)
            return response
        content: dict[str, Any] = {"detail": exc.message}
        if exc.fields:
            content["fields"] = exc.fields
        return JSONResponse(content, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StaleDataError)
    async def changed_meanwhile(request: Request, exc: StaleDataError) -> Any:
        """Another request or the hub moved the instance while this request ran; its change stands."""
        return await service_error(request, Conflict("the instance changed while your request ran (it may have "
                                                     "started or stopped meanwhile); reload it and try again"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if isinstance(exc.body, bytes | bytearray) and exc.body:
            # FastAPI hands a body it did not parse as JSON (another Content-Type, or none) to validation as bytes
            return JSONResponse({"detail": "the request body must be JSON (Content-Type: application/json)"},
                                status_code=415)
        fields: dict[str, str] = {}
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                fields["body"] = f"{err.get('msg', 'invalid JSON')} at position {err.get('loc', (None, '?'))[-1]}"
                continue
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            fields[".".join(loc) or "body"] = err.get("msg", "invalid")
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        return JSONResponse({"detail": "malformed JSON body" if malformed else "invalid request", "fields": fields},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
            # FastAPI's "error parsing the body" for a JSON body json.loads() refused with something else than
            # a JSONDecodeError; it is as malformed as one
            why = "not UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "nested too deeply"
            return JSONResponse({"detail": "malformed JSON body", "fields": {"body": why}}, status_code=422)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := _allowed_methods(app, request.scope)):
            headers["Allow"] = allowed
        if _wants_html(request):
            from labhub.web import pages

            if exc.status_code == 401:
                return pages.login_redirect(request)
            response = pages.error_page(request, exc.status_code, str(exc.detail))
            response.headers.update(headers)
            return response
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers or None)

    app.add_middleware(RefuseNul)
    # a multipart form around the file adds a little: headers and boundaries
    app.add_middleware(BodyLimit, limit=hub.settings.max_body_bytes, uploads=UPLOAD_PATHS,
                       upload_limit=hub.folders.upload_limit() + 64 * 1024)
    return app
