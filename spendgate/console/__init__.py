"""The web console: server-rendered pages from the gateway itself (no build step, nothing
from a CDN, a strict CSP).

Layout: ``app`` builds the ASGI app (error pages, static files, the routers);
``layout`` is what every page shares (signed-in user, permission checks from
``core.access``, the page frame); ``auth`` signs in and out; one module per page group
(``usage``, ``budgets``, ``notifications``); ``templates/`` and ``static/`` (htmx and
the stylesheet, shipped in the package).
"""
