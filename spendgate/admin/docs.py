"""``/docs``: Swagger UI served from the package, so the interactive API docs work offline
and load nothing from another origin.

The UI's files come from ``swagger-ui-bundle-v2`` (Swagger UI 5, which reads OpenAPI 3.1);
the page and its start-up script are ours, so the page runs no inline script
(``security.web.DOCS_CSP``: scripts and styles from this origin only).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

from spendgate.errors import NotFound


def _assets() -> Path:
    """The Swagger UI directory the ``swagger-ui-bundle-v2`` package ships
    (``swagger_ui_bundle/vendor/swagger-ui-<version>``)."""
    vendor = Path(str(files("swagger_ui_bundle"))) / "vendor"
    return max(vendor.glob("swagger-ui-*"))


ASSETS = _assets()
#: the files the page loads, and their types (nothing else of the bundle is served)
SERVED = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>spendgate admin API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" sizes="32x32" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/start.js"></script>
</body>
</html>
"""
START = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
});
"""
#: the bundle changes only with the package: let browsers keep it for a day
CACHE = {"cache-control": "public, max-age=86400"}


def install_docs(api: FastAPI) -> None:
    """Mount ``/docs`` and its assets (the app is built with ``docs_url=None``)."""

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.get("/docs/assets/start.js", include_in_schema=False)
    async def start() -> Response:
        return Response(START, media_type="text/javascript", headers=CACHE)

    @api.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        media_type = SERVED.get(name)
        if media_type is None:
            raise NotFound(f"no docs asset {name}")
        return FileResponse(ASSETS / name, media_type=media_type, headers=CACHE)
