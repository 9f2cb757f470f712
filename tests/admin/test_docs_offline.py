"""`/docs` works offline: Swagger UI's files are served from the package, the page loads
nothing from another origin, and its CSP allows exactly this origin's scripts."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

from spendgate.security.web import DOCS_CSP
from tests.conftest import RunningGateway


class Loads(HTMLParser):
    """Every URL the page makes the browser load (scripts, styles, icons), and inline
    scripts (which the CSP would block)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in_script = True
            if found.get("src"):
                self.urls.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.urls.append(str(found["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def test_docs_load_only_from_this_origin(gateway: RunningGateway) -> None:
    """Every script, stylesheet and icon of /docs is a path on the gateway that answers 200
    with its type (the real Swagger UI 5 bundle, which reads OpenAPI 3.1), no inline script
    runs, the CSP names no other origin, and the start-up script points at /openapi.json."""
    page = httpx.get(gateway.url + "/docs")
    assert page.status_code == 200 and page.headers["content-security-policy"] == DOCS_CSP
    loads = Loads()
    loads.feed(page.text)
    assert loads.inline_scripts == 0
    assert loads.urls and all(u.startswith("/docs/assets/") for u in loads.urls), loads.urls
    types = {}
    for url in loads.urls:
        asset = httpx.get(gateway.url + url)
        assert asset.status_code == 200, url
        types[url.rsplit("/", 1)[1]] = asset.headers["content-type"].split(";")[0]
        if url.endswith("swagger-ui-bundle.js"):
            assert "SwaggerUIBundle" in asset.text and "3.1" in asset.text
        if url.endswith("start.js"):
            assert '"/openapi.json"' in asset.text
    assert types == {
        "swagger-ui.css": "text/css",
        "favicon-32x32.png": "image/png",
        "swagger-ui-bundle.js": "text/javascript",
        "start.js": "text/javascript",
    }
    assert not re.search(r"https?:|//[a-z]", DOCS_CSP)
    assert "script-src 'self';" in DOCS_CSP and "unsafe-eval" not in DOCS_CSP
    assert httpx.get(gateway.url + "/docs/assets/index.html").status_code == 404
    assert httpx.get(gateway.url + "/docs/assets/..%2Fpyproject.toml").status_code == 404
