"""``/docs`` (Swagger UI) and ``/redoc`` with their assets served by the app itself from
``api/static/docs`` (vendored from npm, versions in its README): FastAPI's own pages load
them from a CDN, and were blank on a machine without internet."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/static"
DOCS_ASSETS = f"{STATIC_URL}/docs"


def install(app: FastAPI) -> None:
    """Serve ``/static`` and the two docs pages; ``app`` was made with ``docs_url=None,
    redoc_url=None`` so FastAPI's CDN pages are not there too."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def prefixed(request: Request, path: str) -> str:
        return request.scope.get("root_path", "").rstrip("/") + path

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=prefixed(request, openapi_url),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=prefixed(request, f"{DOCS_ASSETS}/swagger-ui-bundle.js"),
            swagger_css_url=prefixed(request, f"{DOCS_ASSETS}/swagger-ui.css"),
            swagger_favicon_url=prefixed(request, f"{DOCS_ASSETS}/favicon-32x32.png"),
            oauth2_redirect_url=prefixed(request, oauth2_redirect),
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=prefixed(request, openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=prefixed(request, f"{DOCS_ASSETS}/redoc.standalone.js"),
            redoc_favicon_url=prefixed(request, f"{DOCS_ASSETS}/favicon-32x32.png"),
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(oauth2_redirect, swagger_ui_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
