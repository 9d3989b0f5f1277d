"""HTML pages: server-rendered (Jinja2) over the services, with small scripts for the live parts.

``mount(app)`` adds every page router, the static files and the HTML error
handling; the API's exception handlers call :func:`error_page` and
:func:`login_redirect` for browsers.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from labhub.web.pages import admin, auth, folders, instances, launch, quotas, tokens
from labhub.web.pages.common import WEB, AdminPage, PageUser, error_page, login_redirect, page_user, render

__all__ = ["AdminPage", "PageUser", "error_page", "login_redirect", "mount", "page_user", "render"]


def mount(app: FastAPI) -> None:
    for module in (auth, instances, launch, folders, tokens, admin, quotas):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(WEB / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        """A friendly 500 for browsers (the error is logged with its traceback by the server)."""
        if not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", ""):
            return error_page(request, 500, "Something unexpected went wrong on the hub.")
        return JSONResponse({"detail": "internal server error"}, status_code=500)
