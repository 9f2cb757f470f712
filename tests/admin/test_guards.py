"""Every ``/admin`` route declares its permission: the startup check finds routes that
do not, also inside included routers (the way FastAPI serves them now)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from spendgate.admin.deps import admin_routes, guard, unguarded_routes
from spendgate.core.access import Can
from tests.conftest import RunningGateway


def test_a_route_without_a_permission_is_found_through_included_routers() -> None:
    """One guarded route, one guarded by its router, one with none: only the last."""
    inner = APIRouter(prefix="/admin")
    guarded_router = APIRouter(prefix="/admin", dependencies=guard(Can.KEYS_READ))

    @inner.get("/open")
    async def open_route() -> None: ...

    @inner.get("/closed", dependencies=guard(Can.KEYS_READ))
    async def closed_route() -> None: ...

    @guarded_router.get("/by-router")
    async def by_router() -> None: ...

    app = FastAPI()
    app.include_router(inner)
    app.include_router(guarded_router)
    assert {r.path for r in admin_routes(app)} == {
        "/admin/open",
        "/admin/closed",
        "/admin/by-router",
    }
    assert unguarded_routes(app) == ["GET /admin/open"]


def test_the_gateway_has_no_unguarded_admin_route(gateway: RunningGateway) -> None:
    """The real admin app: every route it serves under /admin has a guard."""
    routes = [r for r in admin_routes(gateway.app.admin) if r.path.startswith("/admin")]
    assert len(routes) > 60
    assert unguarded_routes(gateway.app.admin) == []
