"""The admin API (JSON under /admin, OpenAPI at /openapi.json)."""
