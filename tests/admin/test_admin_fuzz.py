"""Fuzz the admin API from its own OpenAPI document (issue 7, "Hardening").

Schemathesis loads ``/openapi.json`` over HTTP from the real gateway (uvicorn in a thread,
the whole stack: body limit, CSRF guard, security headers, the admin app) and, for every
``/admin`` operation, sends a bounded number of generated requests as the master key.

Checks, on every response:

- ``not_a_server_error``: no 5xx;
- ``response_schema_conformance``: the body matches the schema declared for its status;
- ``status_code_conformance``: the status is one the operation declares (a status missing
  from the document is a response that breaks it: clients generated from it cannot
  handle it);
- ``content_type_conformance``: the content type is one declared for that status;
- in the negative pass also ``negative_data_rejection``: input that breaks the schema is
  refused with a 4xx (the admin input schemas are strict).

Left out on purpose: ``positive_data_acceptance`` (schema-valid input is still refused
for good reasons: unknown ids, business rules), the stateful checks (``use_after_free``,
``ensure_resource_availability``: need links the document does not declare),
``ignored_auth`` (auth is the role-table test's job; every request here is the master
key) and ``max_response_time`` (wall-clock limits flake on a busy CI box).

Three passes over the operations:

1. *schema only*: everything generated; path ids are random strings, so mostly 404s and
   422s (validation and the error paths);
2. *invalid input*: schemathesis' negative mode (bodies and query strings that break the
   schema, bodies that are not even JSON) on real path ids;
3. *known ids*: path ids are real objects seeded first (an org, a team, a user, an agent,
   a key, a budget with an exception, a wallet with a top-up, a rate limit, a webhook
   endpoint with a delivery, a notification, an admin token), and id fields of bodies and
   query strings are swapped for real ids about half the time, so requests get past
   "does not exist" into the routes' logic. Rotations, deletions and revocations run last
   so they do not pull the seeded objects from under the other operations.

Bounds and determinism: ``SPENDGATE_FUZZ_EXAMPLES`` (default 10) examples per operation
in passes 1 and 3, ``SPENDGATE_FUZZ_NEGATIVE_EXAMPLES`` (default 5) in pass 2: about
1,850 requests, 25-35 s per backend on a 2-core box at load 5 (most of it generating and
checking requests, not serving them). The defaults were 20 and 10: twice the time for
the same operations, checks and seeds; set them back for a deeper run. Past
``SPENDGATE_FUZZ_SECONDS`` (default 60) of fuzzing, the remaining runs take 3 examples
each (the summary line says so), so a slow machine still exercises every operation and
ends in bounded time. In the whole suite (four workers on two cores) a run takes four to
six times as long as alone: 120 s there was most of the suite's tail, for the same
operations and checks. Each run is seeded from its operation and pass, keeps no example
database and does not shrink: the same requests on every run and machine.
``SPENDGATE_FUZZ_TRACE=<file>`` appends every request and its status to a file.

Failures are collected, not raised one by one: one run reports every distinct problem
(first example per operation, status and root cause), grouped by problem, with the
request, the response, the server's innermost ``spendgate`` frame and exception for a
5xx (from the traceback uvicorn logs), and a ``curl`` to reproduce it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NotSet
from schemathesis.errors import FailureGroup

from spendgate.testing.fake_upstream import ServerHandle, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.outbox import emit_event
from tests.conftest import MASTER_KEY, RunningGateway

pytestmark = [
    # Hypothesis flags a draw during which the global `random` state moved, assuming the
    # strategy used it. Here the gateway runs in a thread of this very process and its
    # webhook worker draws retry jitter from `random.random()` whenever it likes, so the
    # warning fires at random, about nothing the strategies do.
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies"
        ":hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "10"))
NEGATIVE_EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_NEGATIVE_EXAMPLES", "5"))
MIN_EXAMPLES = 3
BUDGET_SECONDS = float(os.environ.get("SPENDGATE_FUZZ_SECONDS", "60"))
#: a file to append every request and its status to (to compare runs, or to see coverage)
TRACE = os.environ.get("SPENDGATE_FUZZ_TRACE")
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]

#: Hypothesis settings for each operation's run: no example database (each run is seeded
#: from the operation and the pass, see ``_fuzz``), no shrinking (failures are collected,
#: not raised), no per-example deadline (PostgreSQL on a busy 2-core CI box is slow now
#: and then), and no "slow data generation" health checks: the generated requests are
#: large JSON bodies by design.
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    verbosity=Verbosity.quiet,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- seeded objects ----------------------------------------------------------------------
@dataclass
class Seeded:
    """Ids of real objects, by the parameter name that refers to them."""

    ids: dict[str, str]
    receiver: ServerHandle

    def for_scope(self, scope_type: Any) -> str | None:
        return (
            {
                "org": self.ids["org_id"],
                "team": self.ids["team_id"],
                "user": self.ids["user_id"],
                "agent": self.ids["agent_id"],
                "key": self.ids["key_id"],
            }.get(scope_type)
            if isinstance(scope_type, str)
            else None
        )


def _seed(gateway: RunningGateway) -> Seeded:
    receiver = serve_in_thread(Receiver(now=gateway.clock.now))
    org = gateway.post("/admin/orgs", {"name": "fuzz org"})["id"]
    team = gateway.post("/admin/teams", {"name": "fuzz team", "org_id": org})["id"]
    user = gateway.post(
        "/admin/users",
        {"email": "fuzz@example.com", "role": "org_admin", "org_id": org, "team_ids": [team]},
    )["id"]
    agent = gateway.post("/admin/agents", {"name": "fuzz agent", "org_id": org, "team_id": team})[
        "id"
    ]
    key = gateway.post(
        "/admin/keys",
        {"name": "fuzz key", "org_id": org, "team_id": team, "user_id": user, "agent_id": agent},
    )["id"]
    budget = gateway.post(
        "/admin/budgets", {"scope_type": "team", "scope_id": team, "amount_usd": "100"}
    )["id"]
    gateway.post(
        f"/admin/budgets/{budget}/exceptions",
        {"reason": "fuzz", "percent": "50", "expires_at": "2026-04-01T00:00:00Z"},
    )
    wallet = gateway.post(
        "/admin/wallets", {"scope_type": "team", "scope_id": team, "initial_topup_usd": "10"}
    )["id"]
    gateway.post(f"/admin/wallets/{wallet}/topups", {"amount_usd": "5", "note": "fuzz"})
    limit = gateway.post("/admin/rate-limits", {"scope_type": "team", "scope_id": team, "rpm": 60})[
        "id"
    ]
    endpoint = gateway.post(
        "/admin/webhooks",
        {"url": f"{receiver.url}/hook", "event_types": ["*"], "scope_type": "org", "scope_id": org},
    )["id"]
    token = gateway.post("/admin/tokens", {"user_id": user, "name": "fuzz token"})["id"]

    async def fire() -> None:
        async with gateway.app.services.engine.begin() as conn:
            await emit_event(
                conn,
                "wallet.low_balance",
                {"wallet_id": wallet, "balance_usd": "0.00"},
                gateway.clock.now(),
                org_id=org,
            )

    gateway.run(fire())
    delivery = _wait_for(lambda: gateway.get(f"/admin/webhooks/{endpoint}/deliveries"))[0]["id"]
    notification = _wait_for(lambda: gateway.get("/admin/notifications", user_id=user))[0]["id"]
    ids = {
        "org_id": org,
        "team_id": team,
        "user_id": user,
        "agent_id": agent,
        "key_id": key,
        "budget_id": budget,
        "wallet_id": wallet,
        "limit_id": limit,
        "endpoint_id": endpoint,
        "delivery_id": delivery,
        "notification_id": notification,
        "token_id": token,
    }
    return Seeded(ids, receiver)


def _wait_for(fetch: Any, timeout: float = 120.0) -> Any:  # a guard against hanging
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if found or time.monotonic() > deadline:
            assert found, "seeding: the event produced no delivery / notification"
            return found
        time.sleep(0.05)


#: body / query fields that name another object (a tuple: the draws below must happen in
#: the same order on every run, which a set's string-hash order is not)
_ID_FIELDS = ("org_id", "team_id", "user_id", "agent_id", "key_id", "budget_id", "wallet_id")


def _with_known_ids(data: st.DataObject, case: schemathesis.Case, seeded: Seeded) -> None:
    """Swap id fields in the body and query string for real ids, each about half the time."""
    if isinstance(case.body, dict):
        body = dict(case.body)
        for name in (n for n in _ID_FIELDS if n in body):
            if data.draw(st.booleans(), label=f"known body.{name}"):
                body[name] = seeded.ids[name]
        if "scope_id" in body:
            known = seeded.for_scope(body.get("scope_type"))
            if known is not None and data.draw(st.booleans(), label="known body.scope_id"):
                body["scope_id"] = known
        if isinstance(body.get("team_ids"), list) and data.draw(
            st.booleans(), label="known body.team_ids"
        ):
            body["team_ids"] = [seeded.ids["team_id"]]
        if isinstance(body.get("url"), str) and data.draw(st.booleans(), label="known body.url"):
            body["url"] = f"{seeded.receiver.url}/hook"  # never a stranger's host
        case.body = body
    if case.query:
        query = dict(case.query)
        for name in (n for n in _ID_FIELDS if n in query):
            if data.draw(st.booleans(), label=f"known query.{name}"):
                query[name] = seeded.ids[name]
        case.query = query


# -- collected failures ------------------------------------------------------------------
class ServerErrors(logging.Handler):
    """Collects what the server logs for unhandled exceptions (uvicorn logs each one, just
    after it has sent the 500). Requests go one at a time, so a record that arrives while
    we wait after a 5xx belongs to that request."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._records: list[BaseException] = []
        self._arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self._records.append(record.exc_info[1])
            self._arrived.set()

    def clear(self) -> None:
        self._records = []
        self._arrived.clear()

    def wait(self, timeout: float = 2.0) -> tuple[str, list[str]]:
        """The root cause of the exception logged for the last request and its
        ``spendgate`` frames (empty if none was logged)."""
        self._arrived.wait(timeout)
        return (
            "; ".join(_root_cause(exc) for exc in self._records),
            [line for exc in self._records for line in _spendgate_frames(exc)],
        )


#: the frames every admin request passes through (the gateway's routing and middleware)
_PLUMBING = ("/spendgate/app.py", "/spendgate/web_security.py")


def _spendgate_frames(exc: BaseException) -> list[str]:
    """The exception's traceback through spendgate's own code below the plumbing, one
    line a frame."""
    return [
        f"{f.filename[f.filename.rindex('/spendgate/') + 1 :]}:{f.lineno} in {f.name}: "
        f"{(f.line or '').strip()}"
        for f in traceback.extract_tb(exc.__traceback__)
        if "/spendgate/" in f.filename and not f.filename.endswith(_PLUMBING)
    ]


def _root_cause(exc: BaseException) -> str:
    """``spendgate/file.py:line in fn: Error: first line of the message`` (the innermost
    spendgate frame of the exception as raised)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/spendgate/" in f.filename]
    where = ""
    if frames:
        f = frames[-1]
        where = f"{f.filename[f.filename.rindex('/spendgate/') + 1 :]}:{f.lineno} in {f.name}: "
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{where}{type(exc).__module__}.{type(exc).__qualname__}: {message}"


def _generic(cause: str) -> str:
    """A server error's cause without the details that vary per request (a driver's
    ``query argument $3``, the value that overflowed)."""
    return re.sub(r"\$\d+|: -?\d{6,}", "", cause)


@dataclass
class Finding:
    operation: str
    stage: str
    status: int | None
    checks: list[str]
    details: list[str]
    request: str
    response: str
    curl: str
    cause: str = ""
    frames: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str:
        """What went wrong, without where or with which ids: findings sharing it are one
        bug showing up in several operations."""
        if self.cause:
            return _generic(self.cause.split(": ", 1)[-1] if " in " in self.cause else self.cause)
        return re.sub(r"\b[a-z]+_[0-9a-f]{16,}\b", "<id>", self.response)


@dataclass
class Findings:
    items: dict[tuple[str, int | None, str], Finding] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        """The first example per operation, status and root cause (or failed checks)."""
        key = (
            finding.operation,
            finding.status,
            _generic(finding.cause) or ",".join(finding.checks),
        )
        self.items.setdefault(key, finding)

    def report(self) -> str:
        groups: dict[tuple[int | None, str, str], list[Finding]] = {}
        for f in self.items.values():
            groups.setdefault((f.status, ", ".join(f.checks), f.problem), []).append(f)
        lines = [
            f"the admin API fuzz found {len(groups)} kind(s) of failure in "
            f"{len(self.items)} operation(s) (first example of each; the server's "
            "innermost spendgate frame for each 5xx):"
        ]
        for n, ((status, checks, _), found) in enumerate(groups.items(), 1):
            first = found[0]
            lines += [
                f"\n[{n}] {status}: {checks} ({len(found)} operation(s))",
                f"    {first.operation} ({first.stage})",
                f"    request:   {first.request}",
                f"    response:  {first.response}",
            ]
            if first.cause:
                lines.append(f"    server:    {first.cause}")
                lines += [f"        {frame}" for frame in first.frames]
            lines += [f"    {d}" for d in first.details if d]
            lines.append(f"    reproduce: {first.curl}")
            for other in found[1:]:
                lines.append(
                    f"    also {other.operation} ({other.stage}): {other.request}"
                    + (f"\n         server: {other.cause}" if other.cause else "")
                )
        return "\n".join(lines)


def _short(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _describe(case: schemathesis.Case) -> str:
    request = f"{case.method} {case.formatted_path}"
    if case.query:
        request += f" query={json.dumps(case.query, default=str)}"
    if not isinstance(case.body, NotSet):
        request += f" body={json.dumps(case.body, default=str)}"
    return request


def _record(
    findings: Findings,
    stage: str,
    case: schemathesis.Case,
    response: Any,
    failed: FailureGroup | requests.RequestException,
    server: tuple[str, list[str]] = ("", []),
) -> None:
    request = _describe(case)
    curl = case.as_curl_command().replace(
        "'Authorization: [Filtered]'", '"Authorization: Bearer $SPENDGATE_MASTER_KEY"'
    )
    findings.add(
        Finding(
            operation=case.operation.label,
            stage=stage,
            status=response.status_code if response is not None else None,
            checks=(
                sorted({f.title for f in failed.exceptions})
                if isinstance(failed, FailureGroup)
                else [f"request failed: {type(failed).__name__}"]
            ),
            details=(
                [" ".join(f.message.split()) for f in failed.exceptions]
                if isinstance(failed, FailureGroup)
                else [str(failed)]
            ),
            request=_short(request),
            response=_short(response.text if response is not None else ""),
            curl=_short(curl, 2000),
            cause=server[0],
            frames=server[1],
        )
    )


# -- the run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One sweep over the operations."""

    name: str
    mode: GenerationMode
    known_ids: bool
    examples: int
    checks: tuple[Any, ...]


PASSES = (
    Pass(
        "schema only",
        GenerationMode.POSITIVE,
        known_ids=False,
        examples=EXAMPLES,
        checks=tuple(CHECKS),
    ),
    # before "known ids", whose deletions and revocations would leave it only 404s
    Pass(
        "invalid input",
        GenerationMode.NEGATIVE,
        known_ids=True,
        examples=NEGATIVE_EXAMPLES,
        checks=tuple(NEGATIVE_CHECKS),
    ),
    Pass(
        "known ids",
        GenerationMode.POSITIVE,
        known_ids=True,
        examples=EXAMPLES,
        checks=tuple(CHECKS),
    ),
)


@dataclass
class Budget:
    """Past ``seconds``, each remaining operation runs ``MIN_EXAMPLES`` only: every
    operation is still exercised, and a slow machine ends in bounded time."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    shortened: int = 0

    def examples(self, wanted: int) -> int:
        if time.monotonic() - self.started <= self.seconds:
            return wanted
        self.shortened += 1
        return min(wanted, MIN_EXAMPLES)


def _can_negate(operation: Any) -> bool:
    """Negative data needs something to negate besides fixed path ids."""
    return bool(operation.body) or bool(operation.query)


def _fuzz(
    operation: Any,
    run_pass: Pass,
    seeded: Seeded,
    findings: Findings,
    server_errors: ServerErrors,
    budget: Budget,
) -> None:
    """Run ``operation`` for the pass's number of examples, collecting failures."""
    path_parameters = None
    if run_pass.known_ids:  # a parameter no seeded object fits stays generated
        path_parameters = {
            p.name: seeded.ids[p.name] for p in operation.path_parameters if p.name in seeded.ids
        }
    strategy = operation.as_strategy(generation_mode=run_pass.mode, path_parameters=path_parameters)
    label = f"{operation.label} ({run_pass.name})"
    swap_ids = run_pass.known_ids and run_pass.mode is GenerationMode.POSITIVE

    # a fixed seed per operation and pass: the same requests on every run and machine,
    # different ones for each operation, and unchanged by edits elsewhere in this file
    @seed(zlib.crc32(label.encode()))
    @settings(FUZZ_SETTINGS, max_examples=budget.examples(run_pass.examples))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(strategy, label="case")
        if swap_ids:
            _with_known_ids(data, case, seeded)
        findings.examples[label] = findings.examples.get(label, 0) + 1
        server_errors.clear()
        try:
            response = case.call()
        except requests.RequestException as exc:  # a timeout or a dropped connection
            _record(findings, run_pass.name, case, None, exc, server_errors.wait())
            return
        if TRACE:
            with open(TRACE, "a") as trace_file:
                trace_file.write(f"{response.status_code} {label}: {_describe(case)}\n")
        try:
            case.validate_response(response, checks=list(run_pass.checks))
        except FailureGroup as group:
            server = server_errors.wait() if response.status_code >= 500 else ("", [])
            _record(findings, run_pass.name, case, response, group, server)

    started = time.monotonic()
    run()
    findings.seconds[label] = time.monotonic() - started


def _destroys(operation: Any) -> int:
    """0 for most; rotations 1, deletions 2, revocations 3 (they run in that order, last,
    so they do not pull the seeded objects from under the other operations)."""
    if operation.path.endswith(("/rotate", "/rotate-secret")):
        return 1
    if operation.method.upper() == "DELETE":
        return 2
    return 3 if operation.path.endswith("/revoke") else 0


@pytest.fixture
def hypothesis_as_found() -> Iterator[None]:
    """Schemathesis patches Hypothesis module globals the first time it builds a strategy
    (a printer that prints nothing, a larger buffer, ...); put them back afterwards so the
    other Hypothesis tests of the session still print their failing examples. (When the
    schemathesis pytest plugin is loaded it has patched them at startup already, and this
    restores what it set.)"""
    from hypothesis import core
    from hypothesis.internal import entropy
    from hypothesis.internal.conjecture import engine
    from hypothesis.strategies._internal import collections as st_collections
    from hypothesis.strategies._internal import core as st_core
    from schemathesis.generation import hypothesis as schemathesis_hypothesis

    names = [
        (core, "RepresentationPrinter"),
        (core, "BUFFER_SIZE"),
        (engine, "BUFFER_SIZE"),
        (st_collections, "BUFFER_SIZE"),
        (st_core, "is_first_param_referenced_in_function"),
        (entropy, "register_random"),
    ]
    saved = [(module, name, getattr(module, name)) for module, name in names]
    setup = schemathesis_hypothesis.setup
    patched = getattr(setup, "_is_patched", False)
    yield
    for module, name, value in saved:
        setattr(module, name, value)
    setup._is_patched = patched  # type: ignore[attr-defined]


@pytest.fixture
def seeded(gateway: RunningGateway) -> Iterator[Seeded]:
    found = _seed(gateway)
    yield found
    found.receiver.stop()


def test_admin_api_fuzz(gateway: RunningGateway, seeded: Seeded, hypothesis_as_found: None) -> None:
    # explicit, so no schemathesis.toml found on the way up changes the run; every request
    # is the master key (no generated Authorization values: failed logins would get this
    # address throttled)
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {MASTER_KEY}"},
            "request-timeout": 30,
            "generation": {"with-security-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=config)
    schema = schema.include(path_regex=r"^/admin/")
    # .ok() raises on an operation schemathesis cannot read: a broken document fails here
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "no /admin operations in /openapi.json"
    operations.sort(key=_destroys)  # stable: the document's order otherwise

    findings, server_errors, budget = Findings(), ServerErrors(), Budget(BUDGET_SECONDS)
    # uvicorn logs a traceback for every 500: collect them for the report instead of
    # printing thousands of lines of them to stderr and the captured log
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(server_errors)
    propagate, uvicorn_log.propagate = uvicorn_log.propagate, False
    try:
        for run_pass in PASSES:
            for operation in operations:
                if run_pass.mode is GenerationMode.NEGATIVE and not _can_negate(operation):
                    continue
                _fuzz(operation, run_pass, seeded, findings, server_errors, budget)
    finally:
        uvicorn_log.propagate = propagate
        uvicorn_log.removeHandler(server_errors)
    elapsed = time.monotonic() - budget.started

    slowest = sorted(findings.seconds.items(), key=lambda kv: -kv[1])[:5]
    print(
        f"\nadmin fuzz: {len(operations)} operations, "
        f"{sum(findings.examples.values())} requests in {elapsed:.1f}s"
        + (
            f" ({budget.shortened} runs shortened to {MIN_EXAMPLES} examples)"
            if budget.shortened
            else ""
        )
        + "; slowest: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in slowest)
    )
    if findings.items:
        pytest.fail(findings.report(), pytrace=False)
