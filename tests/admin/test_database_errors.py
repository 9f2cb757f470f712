"""Only an outage is "the database is unavailable": the admin API answers 503 for a
connection that failed, 409 for a write the database refused as a conflict, and a logged
500 for anything else the database refused (a bug must not read as an outage)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from spendgate.store.database import database_unreachable
from tests.conftest import RunningGateway


class ServerShuttingDown(Exception):
    """What asyncpg raises for ``terminating connection due to administrator command``:
    a plain server error (SQLSTATE 57P01), which SQLAlchemy wraps as a bare DBAPIError."""

    sqlstate = "57P01"


class ReadOnlyTransaction(Exception):
    """What asyncpg raises for a write to a hot standby, or to a primary a failover demoted
    (SQLSTATE 25006): the database cannot take writes now, an outage."""

    sqlstate = "25006"


class UniqueViolation(Exception):
    sqlstate = "23505"


class SerializationFailure(Exception):
    """What asyncpg raises when a concurrent transaction won (SQLSTATE 40001)."""

    sqlstate = "40001"


ERRORS: dict[str, Exception] = {
    "operational": OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")),
    "interface": InterfaceError("SELECT 1", {}, Exception("connection is closed")),
    "pool": PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    "shutdown": DBAPIError("SELECT 1", {}, ServerShuttingDown("terminating connection")),
    "socket": ConnectionResetError("connection reset by peer"),
    "read_only": DBAPIError("INSERT", {}, ReadOnlyTransaction("read-only transaction")),
    "integrity": IntegrityError("INSERT", {}, UniqueViolation("duplicate key value")),
    "serialization": DBAPIError("UPDATE", {}, SerializationFailure("could not serialize")),
    "programming": ProgrammingError("SELECT nope", {}, Exception("column nope does not exist")),
}


@pytest.mark.parametrize(
    ("kind", "outage"),
    [
        ("operational", True),
        ("interface", True),
        ("pool", True),
        ("shutdown", True),
        ("socket", True),
        ("read_only", True),
        ("integrity", False),
        ("serialization", False),
        ("programming", False),
    ],
)
def test_only_connection_failures_count_as_an_outage(kind: str, outage: bool) -> None:
    """The one classifier every boundary (admin, console, proxy) asks."""
    assert database_unreachable(ERRORS[kind]) is outage


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("operational", 503, "database_unavailable"),
        ("shutdown", 503, "database_unavailable"),
        ("socket", 503, "database_unavailable"),
        ("read_only", 503, "database_unavailable"),
        ("integrity", 409, "conflict"),
        ("serialization", 409, "conflict"),
        ("programming", 500, "internal_error"),
    ],
)
def test_the_admin_api_answers_a_database_error_for_what_it_is(
    gateway: RunningGateway, kind: str, status: int, code: str
) -> None:
    """A route that hits each error answers in the admin API's format: 503 (with
    Retry-After) for an outage only; an IntegrityError is a 409 conflict, a programming
    error a 500 whose message does not claim the database is down."""

    async def fails() -> None:
        raise ERRORS[kind]

    gateway.app.admin.add_api_route(f"/admin/_fails/{kind}", fails, methods=["POST"])
    answer = gateway.admin.post(f"/admin/_fails/{kind}")
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert ("unavailable" in error["message"]) is (status == 503)
    assert ("retry-after" in answer.headers) is (status == 503)
