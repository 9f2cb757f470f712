"""Every admin route × every role × own / other team, driven from the OpenAPI document.

The table below is written independently of the code's own permission map: for each
route, the roles allowed to call it, how to build a call on an object of the caller's
own scope and on one of another scope, and what each must answer. A route in
``/openapi.json`` without a row here fails the test, so no route ships without a rule.

The world: org A with teams T1 and T2, org B with team TB. Callers use admin tokens of
users of org A: an org admin, finance, and a team admin and a viewer of T1. "Own" is T1
for everyone; "other" is TB (another org) for the org-wide roles and T2 (another team
of the same org) for the team roles.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.anomalies import anomalies
from spendgate.webhooks.tables import notifications
from tests.conftest import MASTER_KEY, RunningGateway

OA, FIN, TA, VW, MEMBER = "org_admin", "finance", "team_admin", "viewer", "member"
ROLES = (OA, FIN, TA, VW)
ALL = frozenset(ROLES)
NONE: frozenset[str] = frozenset()
_n = itertools.count(1)


@dataclass
class Ctx:
    """One team's world: the team, its org, a member user and (lazily) fresh objects."""

    gw: RunningGateway
    org_id: str
    team_id: str
    user_id: str = ""
    marker_key: dict[str, Any] = field(default_factory=dict)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.gw.post(path, body)
        return result

    def key(self) -> str:
        return self.post(
            "/admin/keys", {"name": f"k{next(_n)}", "org_id": self.org_id, "team_id": self.team_id}
        )["id"]

    def user(self, role: str = "member") -> str:
        return self.post(
            "/admin/users",
            {"email": f"u{next(_n)}@example.com", "role": role, "team_ids": [self.team_id]},
        )["id"]

    def agent(self) -> str:
        return self.post("/admin/agents", {"name": f"a{next(_n)}", "team_id": self.team_id})["id"]

    def budget(self) -> str:
        return self.post(
            "/admin/budgets", {"scope_type": "team", "scope_id": self.team_id, "amount_usd": "100"}
        )["id"]

    def wallet(self) -> str:
        """A wallet of a new key of the team (one open wallet per scope)."""
        return self.post(
            "/admin/wallets",
            {"scope_type": "key", "scope_id": self.key(), "initial_topup_usd": "5"},
        )["id"]

    def limit(self) -> str:
        return self.post(
            "/admin/rate-limits",
            {"scope_type": "team", "scope_id": self.team_id, "model": f"m{next(_n)}-*", "rpm": 10},
        )["id"]

    def webhook(self) -> str:
        return self.post(
            "/admin/webhooks",
            {
                "url": "http://127.0.0.1:9/hook",
                "event_types": ["key.created"],
                "scope_type": "team",
                "scope_id": self.team_id,
            },
        )["id"]

    def delivery(self) -> tuple[str, str]:
        endpoint = self.webhook()
        self.key()  # key.created in this team: one delivery to the endpoint
        rows = self.gw.get(f"/admin/webhooks/{endpoint}/deliveries")
        return endpoint, rows[0]["id"]

    def token(self, user_id: str | None = None) -> str:
        return self.post(
            "/admin/tokens", {"user_id": user_id or self.user(VW), "name": f"t{next(_n)}"}
        )["id"]

    def anomaly(self, *, action: bool = False) -> str:
        """A team anomaly of this team, stored directly (with a pause in force if asked)."""
        anomaly_id, now = new_id("anom"), self.gw.clock.now()
        row = {
            "id": anomaly_id,
            "org_id": self.org_id,
            "scope_type": "team",
            "scope_id": self.team_id,
            "team_id": self.team_id,
            "started_at": now,
            "hour_start": now,
            "resolved_at": now,  # resolved: any number of them per team
            "method": "hour_of_week",
            "elapsed": 0.5,
            "expected_nanos": 1,
            "upper_nanos": 2,
            "actual_nanos": 3,
            "peak_excess_nanos": 2,
            "last_checked_at": now,
            "contributors": [],
            "action": {
                "kind": "pause",
                "applied": True,
                "applied_at": now.isoformat(),
                "created": [],
                "changed": {},
            }
            if action
            else None,
            "action_state": "active" if action else None,
        }

        async def insert() -> None:
            async with self.gw.app.services.engine.begin() as conn:
                await conn.execute(sa.insert(anomalies).values(**row))

        self.gw.run(insert())
        return anomaly_id

    def allocation_rule(self) -> str:
        return self.post("/admin/allocation-rules", {"org_id": self.org_id, "method": "even"})["id"]

    def ticket(self) -> str:
        """An open cost ticket on a new key wallet of the team, stored directly."""
        key = self.key()
        wallet = self.post(
            "/admin/wallets", {"scope_type": "key", "scope_id": key, "tickets": "on"}
        )["id"]
        ticket_id, now = new_id("tkt"), self.gw.clock.now()
        row = {
            "id": ticket_id,
            "org_id": self.org_id,
            "wallet_id": wallet,
            "key_id": key,
            "team_id": self.team_id,
            "status": "open",
            "asked_nanos": 1_000_000,
            "refusals": 1,
            "created_at": now,
            "last_refused_at": now,
        }

        async def insert() -> None:
            async with self.gw.app.services.engine.begin() as conn:
                await conn.execute(sa.insert(schema.wallet_tickets).values(**row))

        self.gw.run(insert())
        return ticket_id

    def anomaly_action(self) -> str:
        return self.post(
            "/admin/anomaly-actions",
            {"scope_type": "key", "scope_id": self.key(), "action": "pause"},
        )["id"]

    def notification(self, user_id: str) -> str:
        notification_id = new_id("ntf")
        row = {
            "id": notification_id,
            "user_id": user_id,
            "event_id": None,
            "type": "key.created",
            "severity": "info",
            "title": "t",
            "body": "b",
            "link": None,
            "data": {},
            "created_at": self.gw.clock.now(),
            "read_at": None,
            "digest_state": None,
            "digest_id": None,
        }

        async def insert() -> None:
            async with self.gw.app.services.engine.begin() as conn:
                await conn.execute(sa.insert(notifications).values(**row))

        self.gw.run(insert())
        return notification_id


@dataclass
class Caller:
    role: str
    user_id: str
    token: str
    token_id: str
    own: Ctx
    other: Ctx


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


Build = Callable[[Caller, Ctx], Call]


@dataclass(frozen=True)
class Rule:
    """``ok``: status for an object in scope; ``other``: status for one out of scope, or
    ``None`` for list routes (checked by what the answer contains instead)."""

    allowed: frozenset[str]
    build: Build
    ok: int = 200
    other: int | None = 404
    #: for list routes: text that must appear for the own scope and not for the other
    #: (``None``: nothing to tell apart for this caller)
    marker: Callable[[Caller, Ctx], str | None] | None = None
    #: the status when "other" is another team of the caller's own org, if not ``other``
    same_org: int | None = None


def get(path: str, **params: Any) -> Callable[[Caller, Ctx], Call]:
    return lambda _c, _x: Call("GET", path, params=params or None)


def _future() -> str:
    return (datetime(2026, 3, 10, 15, 30, tzinfo=UTC) + timedelta(days=3)).isoformat()


def _month(c: Caller) -> str:
    """A past month each role closes on its own (a second close would be a 409)."""
    return "2025-01" if c.role == OA else "2025-02"


RULES: dict[tuple[str, str], Rule] = {
    # directory
    ("POST", "/admin/orgs"): Rule(
        NONE, lambda c, x: Call("POST", "/admin/orgs", {"name": "new"}), 201, None
    ),
    ("GET", "/admin/orgs"): Rule(
        ALL, get("/admin/orgs"), other=None, marker=lambda c, x: _other_org(c, x)
    ),
    ("GET", "/admin/orgs/{org_id}"): Rule(
        ALL,
        lambda c, x: Call("GET", f"/admin/orgs/{x.org_id}"),
        # team roles' "other" is a team of their own org, and everyone reads their own org
        same_org=200,
    ),
    ("PATCH", "/admin/orgs/{org_id}"): Rule(
        frozenset({OA}),
        lambda c, x: Call("PATCH", f"/admin/orgs/{x.org_id}", {"week_start": "sunday"}),
    ),
    ("POST", "/admin/teams"): Rule(
        frozenset({OA}),
        lambda c, x: Call("POST", "/admin/teams", {"org_id": x.org_id, "name": "t"}),
        201,
        422,
    ),
    ("GET", "/admin/teams"): Rule(
        ALL, get("/admin/teams"), other=None, marker=lambda c, x: x.team_id
    ),
    ("GET", "/admin/teams/{team_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/teams/{x.team_id}")
    ),
    ("POST", "/admin/users"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call(
            "POST",
            "/admin/users",
            {"email": f"n{next(_n)}@example.com", "role": "viewer", "team_ids": [x.team_id]},
        ),
        201,
        422,
    ),
    ("GET", "/admin/users"): Rule(
        ALL, get("/admin/users"), other=None, marker=lambda c, x: x.user_id
    ),
    ("GET", "/admin/users/{user_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/users/{x.user()}")
    ),
    ("PATCH", "/admin/users/{user_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("PATCH", f"/admin/users/{x.user()}", {"role": "viewer"}),
    ),
    ("PUT", "/admin/users/{user_id}/memberships/{team_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call(
            "PUT", f"/admin/users/{x.user()}/memberships/{x.team_id}", {"role": "viewer"}
        ),
    ),
    ("DELETE", "/admin/users/{user_id}/memberships/{team_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("DELETE", f"/admin/users/{x.user()}/memberships/{x.team_id}"),
    ),
    ("POST", "/admin/agents"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("POST", "/admin/agents", {"name": "a", "team_id": x.team_id}),
        201,
        422,
    ),
    ("GET", "/admin/agents"): Rule(
        ALL, get("/admin/agents"), other=None, marker=lambda c, x: x.marker_key["agent"]
    ),
    ("GET", "/admin/agents/{agent_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/agents/{x.agent()}")
    ),
    # keys
    ("POST", "/admin/keys"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call(
            "POST", "/admin/keys", {"name": "k", "org_id": x.org_id, "team_id": x.team_id}
        ),
        201,
        422,
    ),
    ("GET", "/admin/keys"): Rule(
        frozenset({OA, TA, VW}),
        get("/admin/keys"),
        other=None,
        marker=lambda c, x: x.marker_key["key"],
    ),
    ("GET", "/admin/keys/{key_id}"): Rule(
        frozenset({OA, TA, VW}), lambda c, x: Call("GET", f"/admin/keys/{x.key()}")
    ),
    ("PATCH", "/admin/keys/{key_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("PATCH", f"/admin/keys/{x.key()}", {"expires_at": None}),
    ),
    ("POST", "/admin/keys/{key_id}/revoke"): Rule(
        frozenset({OA, TA}), lambda c, x: Call("POST", f"/admin/keys/{x.key()}/revoke")
    ),
    ("POST", "/admin/keys/{key_id}/rotate"): Rule(
        frozenset({OA, TA}), lambda c, x: Call("POST", f"/admin/keys/{x.key()}/rotate")
    ),
    # usage and events
    ("GET", "/admin/usage"): Rule(
        ALL, get("/admin/usage", group_by="team"), other=None, marker=lambda c, x: x.team_id
    ),
    ("POST", "/admin/usage/rebuild"): Rule(
        NONE,
        lambda c, x: Call(
            "POST", "/admin/usage/rebuild", {"start": "2026-03-01", "end": "2026-03-02"}
        ),
        other=None,
    ),
    ("POST", "/admin/ledger/purge"): Rule(
        NONE, lambda c, x: Call("POST", "/admin/ledger/purge", {}), other=None
    ),
    # statements: each org-wide role closes (then reissues) a month of its own
    ("GET", "/admin/statements"): Rule(ALL, get("/admin/statements"), other=None),
    ("GET", "/admin/statements/{month}"): Rule(
        ALL,
        lambda c, x: Call(
            "GET", "/admin/statements/2026-02", params={"org_id": x.org_id, "team_id": x.team_id}
        ),
        other=422,  # another org's id is refused, not swapped for the own
        same_org=404,  # a team of the own org the caller does not reach
    ),
    ("POST", "/admin/statements/{month}/close"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("POST", f"/admin/statements/{_month(c)}/close", {"org_id": x.org_id}),
        other=422,  # another org's id is refused, not swapped for the own
    ),
    ("POST", "/admin/statements/{month}/reissue"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("POST", f"/admin/statements/{_month(c)}/reissue", {"org_id": x.org_id}),
        other=422,  # another org's id is refused, not swapped for the own
    ),
    ("GET", "/admin/allocation-rules"): Rule(ALL, get("/admin/allocation-rules"), other=None),
    ("POST", "/admin/allocation-rules"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call(
            "POST", "/admin/allocation-rules", {"org_id": x.org_id, "method": "even"}
        ),
        201,
        other=422,  # another org's id is refused, not swapped for the own
    ),
    ("DELETE", "/admin/allocation-rules/{rule_id}"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("DELETE", f"/admin/allocation-rules/{x.allocation_rule()}"),
        204,
    ),
    ("GET", "/admin/events"): Rule(
        frozenset({OA, FIN}),
        get("/admin/events", limit=1000),
        other=None,
        marker=lambda c, x: x.marker_key["key"],
    ),
    # budgets
    ("POST", "/admin/budgets"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call(
            "POST",
            "/admin/budgets",
            {"scope_type": "team", "scope_id": x.team_id, "amount_usd": "10"},
        ),
        201,
        422,
    ),
    ("GET", "/admin/budgets"): Rule(
        ALL, get("/admin/budgets"), other=None, marker=lambda c, x: x.marker_key["budget"]
    ),
    ("GET", "/admin/budgets/{budget_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/budgets/{x.budget()}")
    ),
    ("PATCH", "/admin/budgets/{budget_id}"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call("PATCH", f"/admin/budgets/{x.budget()}", {"amount_usd": "20"}),
    ),
    ("DELETE", "/admin/budgets/{budget_id}"): Rule(
        frozenset({OA, FIN, TA}), lambda c, x: Call("DELETE", f"/admin/budgets/{x.budget()}"), 204
    ),
    ("GET", "/admin/budgets/{budget_id}/status"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/budgets/{x.budget()}/status")
    ),
    ("POST", "/admin/budgets/{budget_id}/exceptions"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call(
            "POST",
            f"/admin/budgets/{x.budget()}/exceptions",
            {"amount_usd": "5", "reason": "launch", "expires_at": _future()},
        ),
        201,
    ),
    ("GET", "/admin/budgets/{budget_id}/exceptions"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/budgets/{x.budget()}/exceptions")
    ),
    ("GET", "/admin/forecasts/{budget_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/forecasts/{x.budget()}")
    ),
    ("POST", "/admin/forecasts/refresh"): Rule(
        frozenset({OA, FIN}), lambda c, x: Call("POST", "/admin/forecasts/refresh"), 200, None
    ),
    # wallets
    ("POST", "/admin/wallets"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("POST", "/admin/wallets", {"scope_type": "key", "scope_id": x.key()}),
        201,
        422,
    ),
    ("PATCH", "/admin/wallets/{wallet_id}"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("PATCH", f"/admin/wallets/{x.wallet()}", {"low_balance_usd": "2"}),
    ),
    ("POST", "/admin/wallets/{wallet_id}/close"): Rule(
        frozenset({OA, FIN}), lambda c, x: Call("POST", f"/admin/wallets/{x.wallet()}/close")
    ),
    ("GET", "/admin/wallets"): Rule(
        ALL, get("/admin/wallets"), other=None, marker=lambda c, x: x.marker_key["wallet"]
    ),
    ("GET", "/admin/wallets/{wallet_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/wallets/{x.wallet()}")
    ),
    ("POST", "/admin/wallets/{wallet_id}/topups"): Rule(
        frozenset({OA, FIN}),
        lambda c, x: Call("POST", f"/admin/wallets/{x.wallet()}/topups", {"amount_usd": "1"}),
        201,
    ),
    ("GET", "/admin/wallets/{wallet_id}/topups"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/wallets/{x.wallet()}/topups")
    ),
    # rate limits
    ("POST", "/admin/rate-limits"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call(
            "POST",
            "/admin/rate-limits",
            {"scope_type": "team", "scope_id": x.team_id, "model": f"p{next(_n)}-*", "rpm": 5},
        ),
        201,
        422,
    ),
    ("GET", "/admin/rate-limits"): Rule(
        ALL, get("/admin/rate-limits"), other=None, marker=lambda c, x: x.marker_key["limit"]
    ),
    ("GET", "/admin/rate-limits/{limit_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/rate-limits/{x.limit()}")
    ),
    ("PATCH", "/admin/rate-limits/{limit_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("PATCH", f"/admin/rate-limits/{x.limit()}", {"rpm": 7}),
    ),
    ("DELETE", "/admin/rate-limits/{limit_id}"): Rule(
        frozenset({OA, TA}), lambda c, x: Call("DELETE", f"/admin/rate-limits/{x.limit()}"), 204
    ),
    # webhooks (org admins only: they hold secrets)
    ("POST", "/admin/webhooks"): Rule(
        frozenset({OA}),
        lambda c, x: Call(
            "POST",
            "/admin/webhooks",
            {"url": "http://127.0.0.1:9/h", "scope_type": "team", "scope_id": x.team_id},
        ),
        201,
        422,
    ),
    ("GET", "/admin/webhooks"): Rule(
        frozenset({OA}),
        get("/admin/webhooks"),
        other=None,
        marker=lambda c, x: x.marker_key["webhook"],
    ),
    ("GET", "/admin/webhooks/{endpoint_id}"): Rule(
        frozenset({OA}), lambda c, x: Call("GET", f"/admin/webhooks/{x.webhook()}")
    ),
    ("PATCH", "/admin/webhooks/{endpoint_id}"): Rule(
        frozenset({OA}),
        lambda c, x: Call("PATCH", f"/admin/webhooks/{x.webhook()}", {"description": "changed"}),
    ),
    ("DELETE", "/admin/webhooks/{endpoint_id}"): Rule(
        frozenset({OA}), lambda c, x: Call("DELETE", f"/admin/webhooks/{x.webhook()}"), 204
    ),
    ("POST", "/admin/webhooks/{endpoint_id}/rotate-secret"): Rule(
        frozenset({OA}), lambda c, x: Call("POST", f"/admin/webhooks/{x.webhook()}/rotate-secret")
    ),
    ("POST", "/admin/webhooks/{endpoint_id}/test"): Rule(
        frozenset({OA}), lambda c, x: Call("POST", f"/admin/webhooks/{x.webhook()}/test"), 202
    ),
    ("GET", "/admin/webhooks/{endpoint_id}/deliveries"): Rule(
        frozenset({OA}), lambda c, x: Call("GET", f"/admin/webhooks/{x.webhook()}/deliveries")
    ),
    ("POST", "/admin/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"): Rule(
        frozenset({OA}),
        lambda c, x: Call(
            "POST", "/admin/webhooks/{}/deliveries/{}/redeliver".format(*x.delivery())
        ),
        202,
    ),
    # notifications: one's own; an org admin may name a user of the org
    ("GET", "/admin/notifications"): Rule(
        ALL, lambda c, x: Call("GET", "/admin/notifications", params={"user_id": _reader(c, x)})
    ),
    ("POST", "/admin/notifications/read-all"): Rule(
        ALL,
        lambda c, x: Call(
            "POST", "/admin/notifications/read-all", params={"user_id": _reader(c, x)}
        ),
    ),
    ("POST", "/admin/notifications/{notification_id}/read"): Rule(
        ALL, lambda c, x: Call("POST", f"/admin/notifications/{x.notification(_reader(c, x))}/read")
    ),
    ("GET", "/admin/users/{user_id}/notification-preferences"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/users/{_reader(c, x)}/notification-preferences")
    ),
    ("PUT", "/admin/users/{user_id}/notification-preferences"): Rule(
        ALL,
        lambda c, x: Call(
            "PUT",
            f"/admin/users/{_reader(c, x)}/notification-preferences",
            {"event_types": ["budget.*"], "digest": False},
        ),
    ),
    # audit
    ("GET", "/admin/audit"): Rule(
        ALL, get("/admin/audit", limit=1000), other=None, marker=lambda c, x: x.marker_key["key"]
    ),
    ("GET", "/admin/audit/export"): Rule(
        ALL, get("/admin/audit/export"), other=None, marker=lambda c, x: x.marker_key["key"]
    ),
    ("GET", "/admin/audit/verify"): Rule(
        frozenset({OA, FIN}), get("/admin/audit/verify"), other=None
    ),
    ("POST", "/admin/audit/purge"): Rule(
        NONE,
        lambda c, x: Call("POST", "/admin/audit/purge", {"before": "2020-01-01T00:00:00Z"}),
        200,
        None,
    ),
    # admin tokens: one's own; an org admin's whole org
    ("POST", "/admin/tokens"): Rule(
        ALL,
        lambda c, x: Call("POST", "/admin/tokens", {"user_id": _reader(c, x), "name": "mine"}),
        201,
        422,
    ),
    ("GET", "/admin/tokens"): Rule(
        ALL,
        get("/admin/tokens"),
        other=None,
        marker=lambda c, x: c.token_id if x is c.own else x.marker_key["token"],
    ),
    ("GET", "/admin/tokens/{token_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/tokens/{_token_of(c, x)}")
    ),
    ("POST", "/admin/tokens/{token_id}/revoke"): Rule(
        ALL, lambda c, x: Call("POST", f"/admin/tokens/{_token_of(c, x)}/revoke")
    ),
    # cost tickets: approvers only (org admin, finance; a team admin for their teams' wallets)
    ("GET", "/admin/tickets"): Rule(
        frozenset({OA, FIN, TA}),
        get("/admin/tickets"),
        other=None,
        marker=lambda c, x: x.marker_key["ticket"],
    ),
    ("GET", "/admin/tickets/{ticket_id}"): Rule(
        frozenset({OA, FIN, TA}), lambda c, x: Call("GET", f"/admin/tickets/{x.ticket()}")
    ),
    ("POST", "/admin/tickets/{ticket_id}/approve"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call("POST", f"/admin/tickets/{x.ticket()}/approve", {"reason": "ok"}),
    ),
    ("POST", "/admin/tickets/{ticket_id}/deny"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call("POST", f"/admin/tickets/{x.ticket()}/deny", {"reason": "no"}),
    ),
    # console sign-in: whose, as for admin tokens
    ("POST", "/admin/users/{user_id}/console-invite"): Rule(
        ALL, lambda c, x: Call("POST", f"/admin/users/{_reader(c, x)}/console-invite"), 201
    ),
    ("PUT", "/admin/users/{user_id}/console-password"): Rule(
        ALL,
        lambda c, x: Call(
            "PUT",
            f"/admin/users/{_reader(c, x)}/console-password",
            {"password": "a long enough password"},
        ),
        204,
    ),
    # spend anomalies: seen like spend, acknowledged like budgets, actions set like limits
    ("GET", "/admin/anomalies"): Rule(
        ALL, get("/admin/anomalies"), other=None, marker=lambda c, x: x.marker_key["anomaly"]
    ),
    ("GET", "/admin/anomalies/{anomaly_id}"): Rule(
        ALL, lambda c, x: Call("GET", f"/admin/anomalies/{x.anomaly()}")
    ),
    ("POST", "/admin/anomalies/{anomaly_id}/acknowledge"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call("POST", f"/admin/anomalies/{x.anomaly()}/acknowledge", {"note": "ok"}),
    ),
    ("POST", "/admin/anomalies/{anomaly_id}/lift-action"): Rule(
        frozenset({OA, FIN, TA}),
        lambda c, x: Call("POST", f"/admin/anomalies/{x.anomaly(action=True)}/lift-action", {}),
    ),
    ("POST", "/admin/anomaly-actions"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call(
            "POST",
            "/admin/anomaly-actions",
            {"scope_type": "key", "scope_id": x.key(), "action": "pause"},
        ),
        201,
        422,
    ),
    ("GET", "/admin/anomaly-actions"): Rule(
        ALL,
        get("/admin/anomaly-actions"),
        other=None,
        marker=lambda c, x: x.marker_key["anomaly_action"],
    ),
    ("DELETE", "/admin/anomaly-actions/{action_id}"): Rule(
        frozenset({OA, TA}),
        lambda c, x: Call("DELETE", f"/admin/anomaly-actions/{x.anomaly_action()}"),
        204,
    ),
}


def _other_org(caller: Caller, ctx: Ctx) -> str | None:
    """The org id, unless "other" is just another team of the caller's own org."""
    return ctx.org_id if ctx is caller.own or ctx.org_id != caller.own.org_id else None


def _reader(caller: Caller, ctx: Ctx) -> str:
    """The caller themselves (own), or a user of the other scope."""
    return caller.user_id if ctx is caller.own else ctx.user_id


def _token_of(caller: Caller, ctx: Ctx) -> str:
    """A fresh token of the caller (own), or of a user of the other scope."""
    return ctx.token(caller.user_id if ctx is caller.own else ctx.user_id)


def build_world(gw: RunningGateway) -> dict[str, Caller]:
    org_a = gw.post("/admin/orgs", {"name": "A"})["id"]
    org_b = gw.post("/admin/orgs", {"name": "B"})["id"]
    teams = {
        name: gw.post("/admin/teams", {"org_id": org, "name": name})["id"]
        for name, org in (("T1", org_a), ("T2", org_a), ("TB", org_b))
    }
    ctx = {
        name: Ctx(gw, org_a if name != "TB" else org_b, team_id) for name, team_id in teams.items()
    }
    for c in ctx.values():
        c.user_id = c.user(VW)
        key = gw.post("/admin/keys", {"name": "marker", "org_id": c.org_id, "team_id": c.team_id})
        c.marker_key = {
            "key": key["id"],
            "agent": c.agent(),
            "budget": c.budget(),
            "wallet": c.wallet(),
            "limit": c.limit(),
            "webhook": c.webhook(),
            "token": c.token(c.user_id),
            "anomaly": c.anomaly(),
            "anomaly_action": c.anomaly_action(),
            "ticket": c.ticket(),
        }
        # a priced call per team, so usage has a row to show (or hide)
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
        client.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": "hi"}]
        )
    callers = {}
    for role in ROLES:
        other = ctx["TB"] if role in (OA, FIN) else ctx["T2"]
        user = gw.post(
            "/admin/users",
            {
                "email": f"{role}@a.example",
                "role": role,
                "team_ids": [teams["T1"]] if role in (TA, VW) else [],
                "org_id": org_a,
            },
        )["id"]
        token = gw.post("/admin/tokens", {"user_id": user, "name": role})
        callers[role] = Caller(role, user, token["token"], token["id"], ctx["T1"], other)
    return callers


def _expect(rule: Rule, caller: Caller, own: bool) -> int | None:
    if caller.role not in rule.allowed:
        return 403
    if own:
        return rule.ok
    if rule.same_org is not None and caller.other.org_id == caller.own.org_id:
        return rule.same_org
    return rule.other


@pytest.mark.parametrize("role", ROLES)
def test_role_table(gateway: RunningGateway, role: str) -> None:
    """Every rule for one role, in a world of its own (a test per role, so pytest-xdist
    spreads the table over its workers; the world takes a second to build, the rules of
    one role a few)."""
    gw = gateway
    spec = gw.get("/openapi.json")
    routes = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if path.startswith("/admin")
    }
    assert routes, "the OpenAPI document lists no admin routes"
    assert routes == set(RULES), (
        f"routes without a rule: {sorted(routes - set(RULES))}; "
        f"rules without a route: {sorted(set(RULES) - routes)}"
    )
    caller = build_world(gw)[role]
    failures: list[str] = []
    checked = 0
    with httpx.Client(
        base_url=gw.url, headers={"authorization": f"Bearer {caller.token}"}
    ) as client:
        for (method, path), rule in sorted(RULES.items()):
            for own in (True, False):
                ctx = caller.own if own else caller.other
                expected = _expect(rule, caller, own)
                if expected is None and rule.marker is None:
                    continue  # a route with no object: the own call says all there is
                if expected is None:
                    expected = rule.ok
                call = rule.build(caller, ctx)
                response = client.request(
                    call.method, call.path, json=call.json, params=call.params
                )
                checked += 1
                where = f"{method} {path} as {role} on {'own' if own else 'other'}"
                if response.status_code != expected:
                    failures.append(
                        f"{where}: {response.status_code} != {expected}: {response.text[:200]}"
                    )
                    continue
                marker = rule.marker(caller, ctx) if rule.marker else None
                if marker is not None and role in rule.allowed:
                    seen = marker in response.text
                    if seen != own:
                        failures.append(f"{where}: marker {'missing' if own else 'leaked'}")
    assert not failures, f"{len(failures)} of {checked} checks failed:\n" + "\n".join(failures)
    assert checked >= len(RULES), checked  # every route at least once (own or other)


def test_role_table_covers_master_and_members(gateway: RunningGateway) -> None:
    """The master key may call everything; members and virtual keys have no admin rights;
    revoked and expired tokens stop working at once."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "A"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "T"})["id"]
    member = gw.post(
        "/admin/users", {"email": "m@a.example", "role": "member", "team_ids": [team]}
    )["id"]
    refused = gw.admin.post("/admin/tokens", json={"user_id": member, "name": "m"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "user_id"
    key = gw.create_key(org_id=org, team_id=team)["key"]
    as_key = httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {key}"})
    assert as_key.status_code == 401
    admin = gw.post("/admin/users", {"email": "oa@a.example", "role": OA, "org_id": org})["id"]
    expiry = (gw.clock.now() + timedelta(hours=1)).isoformat()
    issued = gw.post("/admin/tokens", {"user_id": admin, "name": "oa", "expires_at": expiry})
    assert issued["token"].startswith("sg-admin-") and issued["status"] == "active"
    assert issued["token_prefix"] == issued["token"][:15]
    headers = {"authorization": f"Bearer {issued['token']}"}
    assert httpx.get(f"{gw.url}/admin/keys", headers=headers).status_code == 200
    listed = gw.get("/admin/tokens")
    assert all("token" not in t and "token_hash" not in t for t in listed)
    gw.clock.advance(3600)
    assert httpx.get(f"{gw.url}/admin/keys", headers=headers).status_code == 401
    second = gw.post("/admin/tokens", {"user_id": admin, "name": "oa2"})
    headers = {"authorization": f"Bearer {second['token']}"}
    assert httpx.get(f"{gw.url}/admin/keys", headers=headers).status_code == 200
    gw.post(f"/admin/tokens/{second['id']}/revoke", {}, status=200)
    assert httpx.get(f"{gw.url}/admin/keys", headers=headers).status_code == 401
    assert gw.admin.post("/admin/audit/purge", json={}).status_code in (200, 409)


def test_role_change_is_audited_and_takes_effect(gateway: RunningGateway) -> None:
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "A"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "T"})["id"]
    user = gw.post("/admin/users", {"email": "v@a.example", "role": VW, "team_ids": [team]})["id"]
    token = gw.post("/admin/tokens", {"user_id": user, "name": "v"})["token"]
    headers = {"authorization": f"Bearer {token}"}
    body = {"scope_type": "team", "scope_id": team, "amount_usd": "10"}
    assert httpx.post(f"{gw.url}/admin/budgets", json=body, headers=headers).status_code == 403
    own_change = httpx.patch(f"{gw.url}/admin/users/{user}", json={"role": OA}, headers=headers)
    assert own_change.status_code == 403
    changed = gw.admin.patch(f"/admin/users/{user}", json={"role": TA})
    assert changed.status_code == 200 and changed.json()["role"] == TA
    assert httpx.post(f"{gw.url}/admin/budgets", json=body, headers=headers).status_code == 201
    # a team admin may not hand out org-wide roles
    other = gw.post("/admin/users", {"email": "w@a.example", "role": VW, "team_ids": [team]})["id"]
    escalate = httpx.patch(f"{gw.url}/admin/users/{other}", json={"role": FIN}, headers=headers)
    assert escalate.status_code == 403
    entries = gw.get("/admin/audit", action="user.role_changed")["entries"]
    assert len(entries) == 1
    assert entries[0]["before"]["role"] == VW and entries[0]["after"]["role"] == TA
    assert entries[0]["actor_type"] == "admin" and entries[0]["actor_id"] == "master"
    # the budget was created with the token: the audit names the token, not the master key
    created = gw.get("/admin/audit", action="budget.created")["entries"]
    assert created[0]["actor_type"] == "token"


def test_team_scoped_audit_and_usage(gateway: RunningGateway) -> None:
    """A viewer of T1 reads T1's audit entries and usage, nothing of T2's."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "A"})["id"]
    t1, t2 = (gw.post("/admin/teams", {"org_id": org, "name": n})["id"] for n in ("1", "2"))
    keys = {t: gw.create_key(org_id=org, team_id=t) for t in (t1, t2)}
    viewer = gw.post("/admin/users", {"email": "v@a.example", "role": VW, "team_ids": [t1]})["id"]
    token = gw.post("/admin/tokens", {"user_id": viewer, "name": "v"})["token"]
    for key in keys.values():
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
        client.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": "hi"}]
        )
    headers = {"authorization": f"Bearer {token}"}
    entries = httpx.get(f"{gw.url}/admin/audit", headers=headers).json()["entries"]
    targets = {e["target_id"] for e in entries}
    assert keys[t1]["id"] in targets and keys[t2]["id"] not in targets
    usage = httpx.get(f"{gw.url}/admin/usage", params={"group_by": "team"}, headers=headers).json()
    assert [r["team"] for r in usage["rows"]] == [t1]
    everything = gw.get("/admin/usage", group_by="team")
    assert {r["team"] for r in everything["rows"]} == {t1, t2}
    assert MASTER_KEY not in str(entries)


# -- users in several teams with different roles (issue 24, item 1) ---------------------------
@dataclass(frozen=True)
class Row:
    """One step of a scenario: who calls what, and the status it must get."""

    caller: str
    method: str
    path: str
    body: Any = None
    status: int = 200
    why: str = ""


def run_rows(gw: RunningGateway, tokens: dict[str, str], rows: list[Row]) -> list[str]:
    """Run the rows in order; the failures (``[]`` when every row got its status)."""
    failures = []
    for row in rows:
        headers = {"authorization": f"Bearer {tokens[row.caller]}"}
        answer = httpx.request(row.method, f"{gw.url}{row.path}", json=row.body, headers=headers)
        if answer.status_code != row.status:
            failures.append(
                f"{row.caller} {row.method} {row.path} ({row.why}): "
                f"{answer.status_code} != {row.status}: {answer.text[:200]}"
            )
    return failures


def _user(gw: RunningGateway, email: str, org: str, memberships: dict[str, str]) -> str:
    body = {
        "email": email,
        "org_id": org,
        "memberships": [{"team_id": t, "role": r} for t, r in memberships.items()],
    }
    user: str = gw.post("/admin/users", body)["id"]
    return user


def test_roles_are_per_team_membership(gateway: RunningGateway) -> None:
    """The escalation from the issue, and its mirror images, fail: team A's admin changes
    a shared user's standing in A only; the shared user's token acts in B with their B
    role; nobody's change in A reaches what anybody may do in B."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "A"})["id"]
    ta, tb = (gw.post("/admin/teams", {"org_id": org, "name": n})["id"] for n in ("A", "B"))
    admin_a = _user(gw, "admin-a@x.example", org, {ta: TA})
    admin_b = _user(gw, "admin-b@x.example", org, {tb: TA, ta: MEMBER})
    shared = _user(gw, "shared@x.example", org, {ta: VW, tb: VW})
    viewer_b = _user(gw, "viewer-b@x.example", org, {tb: VW})
    tokens = {
        name: gw.post("/admin/tokens", {"user_id": uid, "name": name})["token"]
        for name, uid in (("admin_a", admin_a), ("admin_b", admin_b), ("shared", shared))
    }
    boss = gw.post("/admin/users", {"email": "boss@x.example", "role": OA, "org_id": org})["id"]
    tokens["org_admin"] = gw.post("/admin/tokens", {"user_id": boss, "name": "oa"})["token"]
    nobody = _user(gw, "member@x.example", org, {ta: MEMBER, tb: MEMBER})
    gw.post("/admin/tokens", {"user_id": nobody, "name": "m"}, status=422)  # no rights anywhere
    key_a, key_b, key_b2 = (
        gw.post("/admin/keys", {"name": n, "org_id": org, "team_id": t})["id"]
        for n, t in (("ka", ta), ("kb", tb), ("kb2", tb))
    )
    budget_b = gw.post(
        "/admin/budgets", {"scope_type": "team", "scope_id": tb, "amount_usd": "100"}
    )["id"]
    rows = [
        # the escalation from the issue: 200, but it reaches team A only
        Row("admin_a", "PATCH", f"/admin/users/{shared}", {"role": TA}, 200, "A's admin promotes"),
        Row("shared", "POST", f"/admin/keys/{key_a}/revoke", None, 200, "now admin of A"),
        Row("shared", "POST", f"/admin/keys/{key_b}/revoke", None, 404, "still viewer of B"),
        Row("shared", "GET", f"/admin/keys/{key_b}", None, 200, "B: reads as a viewer"),
        Row("shared", "PATCH", f"/admin/budgets/{budget_b}", {"amount_usd": "0.01"}, 404, "B"),
        Row("shared", "PATCH", f"/admin/users/{viewer_b}", {"role": TA}, 404, "B's viewer"),
        Row(
            "shared",
            "POST",
            "/admin/budgets",
            {"scope_type": "team", "scope_id": tb, "amount_usd": "1"},
            422,
            "a budget in B",
        ),
        # team A's admin cannot demote B's admin, not even through their A membership
        Row("admin_a", "PATCH", f"/admin/users/{admin_b}", {"role": VW}, 200, "A part only"),
        Row("admin_b", "POST", f"/admin/keys/{key_b2}/revoke", None, 200, "B admin intact"),
        Row("admin_a", "PUT", f"/admin/users/{admin_b}/memberships/{tb}", {"role": VW}, 403),
        Row("admin_a", "DELETE", f"/admin/users/{admin_b}/memberships/{tb}", None, 403),
        Row("admin_a", "PATCH", f"/admin/users/{admin_b}", {"team_ids": [ta]}, 403, "drop B"),
        Row("admin_a", "PUT", f"/admin/users/{shared}/memberships/{tb}", {"role": TA}, 403),
        Row("admin_a", "PATCH", f"/admin/users/{shared}", {"role": FIN}, 403, "org role"),
        Row("admin_a", "PUT", f"/admin/users/{viewer_b}/memberships/{ta}", {"role": VW}, 404),
        # a team admin's own roles are not theirs to change; the org admin's are
        Row("admin_a", "PUT", f"/admin/users/{admin_a}/memberships/{ta}", {"role": VW}, 403),
        Row("org_admin", "PUT", f"/admin/users/{shared}/memberships/{tb}", {"role": TA}, 200),
        Row("shared", "PATCH", f"/admin/budgets/{budget_b}", {"amount_usd": "50"}, 200, "now"),
        Row("org_admin", "DELETE", f"/admin/users/{shared}/memberships/{tb}", None, 200),
        Row("shared", "GET", f"/admin/budgets/{budget_b}", None, 404, "left B"),
    ]
    failures = run_rows(gw, tokens, rows)
    assert not failures, "\n".join(failures)
    standing = {m["team_id"]: m["role"] for m in gw.get(f"/admin/users/{admin_b}")["memberships"]}
    assert standing == {ta: VW, tb: TA}
    shared_now = gw.get(f"/admin/users/{shared}")
    assert shared_now["memberships"] == [{"team_id": ta, "role": TA}]
    assert (shared_now["org_role"], shared_now["role"]) == ("member", TA)
    changes = gw.get("/admin/audit", action="user.role_changed")["entries"]
    assert len(changes) == 3  # two by team A's admin, one by the org admin


def test_tokens_never_outrank_or_outlive_their_creator(gateway: RunningGateway) -> None:
    """Issue 22, item 3: a viewer may make tokens for themselves — acting as a viewer,
    expiring with the token that made them, revoked with it — and for nobody else; a
    team admin makes none for their members either."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "A"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "T"})["id"]
    viewer = _user(gw, "v@x.example", org, {team: VW})
    other = _user(gw, "w@x.example", org, {team: VW})
    admin = _user(gw, "ta@x.example", org, {team: TA})
    expiry = gw.clock.now() + timedelta(days=7)
    parent = gw.post(
        "/admin/tokens", {"user_id": viewer, "name": "p", "expires_at": expiry.isoformat()}
    )
    tokens = {
        "viewer": parent["token"],
        "admin": gw.post("/admin/tokens", {"user_id": admin, "name": "a"})["token"],
    }
    later = (expiry + timedelta(seconds=1)).isoformat()
    budget = {"scope_type": "team", "scope_id": team, "amount_usd": "1"}
    rows = [
        Row("viewer", "POST", "/admin/tokens", {"user_id": viewer, "name": "c"}, 201, "own"),
        Row("viewer", "POST", "/admin/tokens", {"user_id": other, "name": "c"}, 422, "another"),
        Row("viewer", "POST", "/admin/tokens", {"user_id": admin, "name": "c"}, 422, "admin's"),
        Row(
            "viewer",
            "POST",
            "/admin/tokens",
            {"user_id": viewer, "name": "c", "expires_at": later},
            422,
            "outliving",
        ),
        Row("admin", "POST", "/admin/tokens", {"user_id": viewer, "name": "c"}, 422, "member's"),
        Row("viewer", "POST", "/admin/budgets", budget, 403, "a viewer writes nothing"),
    ]
    failures = run_rows(gw, tokens, rows)
    assert not failures, "\n".join(failures)
    refused = httpx.post(
        f"{gw.url}/admin/tokens",
        json={"user_id": viewer, "name": "c", "expires_at": later},
        headers={"authorization": f"Bearer {tokens['viewer']}"},
    )
    assert refused.json()["error"]["param"] == "expires_at"
    child = httpx.post(
        f"{gw.url}/admin/tokens",
        json={"user_id": viewer, "name": "child"},
        headers={"authorization": f"Bearer {tokens['viewer']}"},
    ).json()
    assert child["expires_at"] is not None
    assert datetime.fromisoformat(child["expires_at"]) == expiry  # with its creator
    as_child = {"authorization": f"Bearer {child['token']}"}
    assert httpx.post(f"{gw.url}/admin/budgets", json=budget, headers=as_child).status_code == 403
    assert httpx.get(f"{gw.url}/admin/keys", headers=as_child).status_code == 200
    gw.post(f"/admin/tokens/{parent['id']}/revoke", {}, status=200)
    assert httpx.get(f"{gw.url}/admin/keys", headers=as_child).status_code == 401
    assert gw.get(f"/admin/tokens/{child['id']}")["status"] == "revoked"


def org_filtered_lists(gw: RunningGateway) -> list[str]:
    """Every admin GET taking ``org_id`` in the query, from the OpenAPI document (so a
    new list route is checked too)."""
    spec = gw.get("/openapi.json")
    paths = sorted(
        path.replace("{month}", "2026-02")
        for path, ops in spec["paths"].items()
        if path.startswith("/admin")
        and any(
            p["name"] == "org_id" and p["in"] == "query"
            for p in ops.get("get", {}).get("parameters", [])
        )
    )
    assert len(paths) >= 15, paths
    return paths


def test_the_master_key_naming_a_missing_org_is_refused_not_answered_empty(
    gateway: RunningGateway,
) -> None:
    """With the master key, a list (keys, budgets, wallets, usage…) or an org action
    naming an org that does not exist is 422 naming ``org_id``, as for an org admin: it
    used to answer ``[]`` (or refresh nothing), so a mistyped id read as "nothing
    there"."""
    gw = gateway
    org = gw.create_key()["org_id"]
    missing = {
        "message": "org_id: org org_missing not found",
        "code": "validation_error",
        "param": "org_id",
    }
    for path in org_filtered_lists(gw):
        assert gw.admin.get(path, params={"org_id": org}).status_code == 200, path
        refused = gw.admin.get(path, params={"org_id": "org_missing"})
        assert (refused.status_code, refused.json()["error"]) == (422, missing), path
    for path, body in (
        ("/admin/forecasts/refresh", {"org_id": "org_missing"}),
        ("/admin/statements/2026-02/close", {"org_id": "org_missing"}),
        ("/admin/allocation-rules", {"org_id": "org_missing", "method": "even"}),
    ):
        refused = gw.admin.post(path, json=body)
        assert (refused.status_code, refused.json()["error"]) == (422, missing), path


def test_another_orgs_id_is_refused_not_swapped(gateway: RunningGateway) -> None:
    """Every admin GET that takes ``org_id`` answers an org admin who names another org
    (or one that does not exist) as it answers for a missing org — 422 naming
    ``org_id`` — instead of quietly answering about the caller's own org (or, for the
    directory lists, with an empty list). Found from the OpenAPI document, so a new list
    route is checked too."""
    gw = gateway
    own = gw.post("/admin/orgs", {"name": "own-lists"})["id"]
    other = gw.post("/admin/orgs", {"name": "other-lists"})["id"]
    gw.create_key(org_id=own)
    gw.create_key(org_id=other)
    admin = gw.post("/admin/users", {"email": "oa@lists.example", "role": OA, "org_id": own})
    token = gw.post("/admin/tokens", {"user_id": admin["id"], "name": "oa"})["token"]
    paths = org_filtered_lists(gw)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}) as client:
        for path in paths:
            assert client.get(path, params={"org_id": own}).status_code == 200, path
            for asked in (other, "org_missing"):
                refused = client.get(path, params={"org_id": asked})
                assert refused.status_code == 422, (path, refused.text)
                assert refused.json()["error"] == {
                    "message": f"org_id: org {asked} not found",
                    "code": "validation_error",
                    "param": "org_id",
                }, path
        refresh = client.post("/admin/forecasts/refresh", json={"org_id": other})
        assert refresh.status_code == 422 and refresh.json()["error"]["param"] == "org_id"
    assert gw.get("/admin/keys", org_id=other), "the master key still lists any org"
