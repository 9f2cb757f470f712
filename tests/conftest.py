"""Shared fixtures: real databases (SQLite file, the machine's PostgreSQL), a fake
upstream served on 127.0.0.1, and the gateway itself served by uvicorn in a thread
with a frozen clock."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import shutil
import ssl
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import fastapi.routing
import httpx
import httpx._transports.default as httpx_transports
import httpx2._transports.default as httpx2_transports
import pytest
from argon2 import PasswordHasher
from hypothesis import settings as hypothesis_settings
from redis.asyncio import Redis

# pytest-xdist's workers export COLUMNS=80, and Rich fixes a console's width from COLUMNS
# when the console is built (the CLI's are built at import): the CLI tests pass their own
# COLUMNS per invocation, as a terminal would, so the worker's must not be there first
os.environ.pop("COLUMNS", None)

from spendgate.app import Gateway, create_app
from spendgate.core.budget_rules import Categories
from spendgate.core.clock import FrozenClock
from spendgate.guard.enforcement import bucket_name
from spendgate.settings import Settings, load_settings
from spendgate.store import console_auth
from spendgate.store.database import migrate_url
from spendgate.testing.fake_upstream import (
    AS_SIMULATED,
    FakeUpstream,
    ServerHandle,
    serve_in_thread,
)
from spendgate.testing.webhook_receiver import Receiver

# No deadline on a Hypothesis example (its default, 200 ms, is a timed assertion): on a
# loaded machine an example of a pure function was held off the CPU for 300 ms, and
# Hypothesis failed the test for "unreliable test timings".
hypothesis_settings.register_profile("spendgate", deadline=None)
hypothesis_settings.load_profile("spendgate")

PG_ADMIN_DSN = os.environ.get("SPENDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MASTER_KEY = "sg-master-test-0123456789"
REDIS_URL = os.environ.get("SPENDGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
UPSTREAM_SECRETS = {
    "OPENAI_KEY": "upstream-openai-secret-1a2b",
    "ANTHROPIC_KEY": "upstream-anthropic-secret-3c4d",
    "AZURE_KEY": "upstream-azure-secret-5e6f",
    "GOOGLE_KEY": "upstream-google-secret-7a8b",
}


async def _pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url(name: str) -> str:
    return f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


T = TypeVar("T")


class PgDropper:
    """Drops the tests' PostgreSQL databases off the tests' path. Every DROP DATABASE
    waits for a checkpoint (seconds on a busy machine), and one checkpoint serves all
    the drops waiting for it: so a thread drops whatever has piled up, all at once."""

    def __init__(self) -> None:
        self.names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="pg-dropper", daemon=True)
        self.thread.start()

    def drop(self, name: str) -> None:
        self.names.put(name)

    def close(self) -> None:
        """Drops what is left; raises what any drop raised."""
        self.names.put(None)
        self.thread.join()
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        done = False
        while not done:
            batch = [self.names.get()]
            while not self.names.empty():
                batch.append(self.names.get())
            done = None in batch
            names = [n for n in batch if n is not None]
            for start in range(0, len(names), 16):
                try:
                    asyncio.run(self._drop_all(names[start : start + 16]))
                except BaseException as exc:  # noqa: BLE001 - re-raised by close()
                    self.errors.append(exc)

    @staticmethod
    async def _drop_all(names: list[str]) -> None:
        await asyncio.gather(
            *(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)') for name in names)
        )


def outside_any_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own: a session fixture is built by the first test
    that asks for it, which may be an async test whose event loop is running, and
    ``asyncio.run`` (migrations, CREATE DATABASE) cannot run inside one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.fixture(scope="session")
def pg_dropper() -> Iterator[PgDropper]:
    dropper = PgDropper()
    yield dropper
    dropper.close()


@pytest.fixture(scope="session")
def pg_template(pg_dropper: PgDropper) -> Iterator[str]:
    """A PostgreSQL database migrated to head once per run; tests get copies of it
    (CREATE DATABASE ... TEMPLATE copies it in a fraction of Alembic's time)."""
    name = f"sg_tmpl_{uuid.uuid4().hex[:12]}"
    outside_any_loop(asyncio.run, _pg_execute(f'CREATE DATABASE "{name}"'))
    try:
        outside_any_loop(migrate_url, _pg_url(name))
        yield name
    finally:
        pg_dropper.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run; tests get copies of it."""
    path = tmp_path_factory.mktemp("template") / "spendgate.db"
    outside_any_loop(migrate_url, f"sqlite:///{path}")
    assert not path.with_name(path.name + "-wal").exists()  # all of it is in the file
    return path


def migrated_sqlite(template: Path, path: Path) -> str:
    """A copy of the migrated template at ``path``, as a database URL."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def _create_pg_database(template: str | None) -> str:
    """A new PostgreSQL database (its name): a copy of ``template``, or empty when None.
    Call it outside any running event loop."""
    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    create = f'CREATE DATABASE "{name}"'
    if template is not None:
        create += f' TEMPLATE "{template}" STRATEGY WAL_LOG'
    asyncio.run(_pg_execute(create))
    return name


@contextmanager
def fresh_pg_database(dropper: PgDropper, template: str | None) -> Iterator[str]:
    """A new PostgreSQL database (its URL): a copy of ``template``, or empty when None;
    dropped afterwards (by ``dropper``, off the test's path)."""
    name = outside_any_loop(_create_pg_database, template)
    try:
        yield _pg_url(name)
    finally:
        dropper.drop(name)


class PgCopies:
    """Copies of the migrated template, made ahead in a thread: a CREATE DATABASE ...
    TEMPLATE takes 0.4 s (more on a busy machine), mostly PostgreSQL writing and
    flushing the copy, and the next test need not wait for it. A copy taken is a new
    database no test has used, as one made on the spot would be; the template never
    changes after its migration."""

    def __init__(self, template: str, dropper: PgDropper, ahead: int = 2) -> None:
        self.template = template
        self.dropper = dropper
        self.ready: queue.Queue[str | BaseException] = queue.Queue(maxsize=ahead)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pg-copies", daemon=True)
        self.thread.start()

    def take(self) -> str:
        """A fresh copy's name (waits for one); raises what making one raised."""
        made = self.ready.get()
        if isinstance(made, BaseException):
            self.ready.put(made)  # for every later test too: the thread has stopped
            raise made
        return made

    def close(self) -> None:
        """Stops making copies; the copies no test took are dropped."""
        self.stopping.set()
        self._drop_ready()  # a copy waiting for room gets it, and the thread sees the stop
        self.thread.join()
        self._drop_ready()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                made: str | BaseException = _create_pg_database(self.template)
            except BaseException as exc:  # noqa: BLE001 - raised by take()
                made = exc
            self.ready.put(made)  # waits while ``ahead`` copies are ready
            if isinstance(made, BaseException):
                return

    def _drop_ready(self) -> None:
        while not self.ready.empty():
            made = self.ready.get()
            if isinstance(made, str):
                self.dropper.drop(made)


@pytest.fixture(scope="session")
def pg_copies(pg_template: str, pg_dropper: PgDropper) -> Iterator[PgCopies]:
    copies = PgCopies(pg_template, pg_dropper)
    yield copies
    copies.close()


@pytest.fixture
def pg_database(request: pytest.FixtureRequest, pg_dropper: PgDropper) -> Iterator[str]:
    """A fresh PostgreSQL database: a copy of the template migrated to head (made ahead
    by ``pg_copies``), or empty for tests marked ``empty_database``."""
    if request.node.get_closest_marker("empty_database") is not None:
        with fresh_pg_database(pg_dropper, None) as url:
            yield url
        return
    copies: PgCopies = request.getfixturevalue("pg_copies")
    name = copies.take()
    try:
        yield _pg_url(name)
    finally:
        pg_dropper.drop(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend, migrated to head (a copy of a template migrated
    once), or empty for tests marked ``empty_database`` (they run migrations themselves).
    PostgreSQL must be running: no skip."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_database")
        return url
    path = tmp_path / "spendgate.db"
    if request.node.get_closest_marker("empty_database") is not None:
        return f"sqlite:///{path}"
    return migrated_sqlite(request.getfixturevalue("sqlite_template"), path)


@pytest.fixture(scope="session", autouse=True)
def test_strength_password_hashing() -> Iterator[None]:
    """Console passwords hashed with argon2id at its lowest cost in this process (the
    production defaults take up to a second per hash on a busy 2-core machine, and a
    console test sets six passwords). Hashing, verifying and rehash checks run the
    same code; only the work factor differs. Servers started as processes keep the
    defaults."""
    saved = console_auth._hasher, console_auth._DUMMY_HASH
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    console_auth._hasher, console_auth._DUMMY_HASH = cheap, cheap.hash(uuid.uuid4().hex)
    yield
    console_auth._hasher, console_auth._DUMMY_HASH = saved


@pytest.fixture(scope="session", autouse=True)
def admin_routes_built_once() -> Iterator[None]:
    """FastAPI builds every included route again (dependants, pydantic adapters) for
    each app: a third of a second per gateway, and the tests start hundreds. Within
    this process a route included the same way again reuses what was built for it.
    The one thing that differs between the apps, the ``dependency_overrides_provider``
    (the app), is never used: spendgate sets no dependency overrides."""
    context_class: Any = getattr(fastapi.routing, "_EffectiveRouteContext", None)
    if context_class is None or not hasattr(context_class, "from_api_route"):
        yield  # another FastAPI: every app builds its routes, only slower
        return
    original = context_class.__dict__["from_api_route"]
    built: dict[int, tuple[Any, Any, Any]] = {}

    def from_api_route(cls: Any, *, original_route: Any, include_context: Any) -> Any:
        key = dataclasses.replace(include_context, dependency_overrides_provider=None)
        hit = built.get(id(original_route))  # the entry holds the route: ids stay unique
        if hit is not None and hit[0] is original_route and hit[1] == key:
            return hit[2]
        context = original.__func__(
            cls, original_route=original_route, include_context=include_context
        )
        built[id(original_route)] = (original_route, key, context)
        return context

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context_class, "from_api_route", classmethod(from_api_route))
        yield


@pytest.fixture(scope="session", autouse=True)
def one_default_tls_context() -> Iterator[None]:
    """Every httpx client loads certifi's CA bundle into a new TLS context: 20 ms of CPU
    each, thousands of times in a run, for clients that speak plain HTTP to 127.0.0.1.
    The openai and anthropic SDKs build theirs with httpx2 (a fork of httpx with its own
    transports), and every gateway's webhook transport (``VettedTransport``) calls
    ``httpx.create_ssl_context()`` itself: all are covered. Clients with the default
    verification share one context per library here (an SSLContext is made to be
    shared); any other setting builds its own."""
    shared = _one_context_each(httpx_transports)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx_transports, "create_ssl_context", shared)
        patch.setattr(httpx, "create_ssl_context", shared)
        patch.setattr(httpx2_transports, "create_ssl_context", _one_context_each(httpx2_transports))
        yield


def _one_context_each(transports: Any) -> Callable[..., ssl.SSLContext]:
    """``transports.create_ssl_context``, returning one context for every call with the
    default verification (per trust setting and CA environment)."""
    create: Callable[..., ssl.SSLContext] = getattr(  # noqa: B009 - not exported
        transports, "create_ssl_context"
    )
    made: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}

    def shared(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return create(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in made:
            made[key] = create(verify=verify, cert=cert, trust_env=trust_env)
        return made[key]

    return shared


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeUpstream, ServerHandle]]:
    fake = FakeUpstream(models=("gpt-4o-mini", "gpt-4o"))
    handle = serve_in_thread(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture
def fake(upstream: tuple[FakeUpstream, ServerHandle]) -> Iterator[FakeUpstream]:
    """The shared fake upstream, with its knobs reset for each test."""
    fake_app = upstream[0]
    yield fake_app
    fake_app.fail_status = None
    fake_app.fail_count = None
    fake_app.fail_headers = {}
    fake_app.delay_seconds = 0.0
    fake_app.stream_delay_seconds = 0.0
    fake_app.drop_stream_after = None
    fake_app.stream_error_after = None
    fake_app.stream_error_form = "own"
    fake_app.required_api_key = None
    fake_app.redirect_to = None
    fake_app.reported_usage = AS_SIMULATED
    fake_app.reported_tier = {}
    fake_app.ignored_fields = frozenset()
    if fake_app.stream_gate is not None:
        fake_app.stream_gate.set()
        fake_app.stream_gate = None
    if fake_app.answer_gate is not None:
        fake_app.answer_gate.set()
        fake_app.answer_gate = None
    fake_app.requests.clear()


def gateway_config(
    upstream_url: str, tmp_path: Path, extra: str = "", gateway_extra: str = ""
) -> Path:
    """A TOML config routing real model names (and a few odd ones) to the fake upstream;
    ``gateway_extra``: more lines of its ``[gateway]`` table."""
    text = (
        textwrap.dedent(f"""
        [gateway]
        ledger_flush_seconds = 0.05

        [providers.openai]
        kind = "openai"
        base_url = "{upstream_url}/v1"
        api_key_env = "OPENAI_KEY"
        timeout_seconds = 5

        [providers.anthropic]
        kind = "anthropic"
        base_url = "{upstream_url}"
        api_key_env = "ANTHROPIC_KEY"

        [providers.azure]
        kind = "azure"
        base_url = "{upstream_url}"
        api_version = "2024-10-21"
        api_key_env = "AZURE_KEY"

        [providers.google]
        kind = "openai_compatible"
        base_url = "{upstream_url}/v1"
        api_key_env = "GOOGLE_KEY"

        [providers.local]
        kind = "openai_compatible"
        base_url = "{upstream_url}/v1"

        [models."gpt-4o-mini"]
        provider = "openai"
        [models."gpt-4o"]
        provider = "openai"
        [models."gpt-4.1"]
        provider = "openai"
        [models."o3-mini"]
        provider = "openai"
        [models."claude-sonnet-4-5"]
        provider = "anthropic"
        [models."claude-3-5-haiku-latest"]
        provider = "anthropic"
        price = {{ model = "claude-3-5-haiku", provider = "anthropic" }}
        [models."claude-opus-4-1"]
        provider = "anthropic"
        [models."azure-gpt-4o"]
        provider = "azure"
        upstream_model = "gpt4o-deployment"
        price = {{ model = "gpt-4o", provider = "openai" }}
        [models."gemini-2.5-flash"]
        provider = "google"
        price = {{ provider = "google" }}
        [models."gemini-2.5-pro"]
        provider = "google"
        price = {{ provider = "google" }}
        [models."llama-local"]
        provider = "local"
        upstream_model = "llama3.1:8b"
        price = {{ input_per_mtok = "0.10", output_per_mtok = "0.20" }}
        [models."mystery-model"]
        provider = "local"
        price = {{ model = "no-such-model-anywhere", provider = "openai" }}
    """)
        + extra
    )
    if gateway_extra:
        text = text.replace("[gateway]\n", f"[gateway]\n{gateway_extra}\n", 1)
    path = tmp_path / "spendgate.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def redis_keyspace() -> AsyncIterator[str]:
    """A fresh key prefix on the real Redis; every key under it is deleted afterwards."""
    prefix = f"sgtest:{uuid.uuid4().hex}:"
    admin = Redis.from_url(REDIS_URL)
    try:
        assert await admin.ping()  # a ConnectionError here fails the test loudly
        yield prefix
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
    finally:
        await admin.aclose()


def budget_counter(budget: dict[str, Any], status: dict[str, Any]) -> str:
    """The live counter of ``budget`` (as the admin API answers it) in the period of its
    ``status`` (``GET /admin/budgets/{id}/status``)."""
    return bucket_name(
        budget["id"],
        status["period_key"],
        datetime.fromisoformat(status["period_start"]),
        datetime.fromisoformat(status["period_end"]),
        Categories(**{k: tuple(v) for k, v in budget["categories"].items()}),
    )


@dataclass
class RunningGateway:
    url: str
    app: Gateway
    clock: FrozenClock
    handle: ServerHandle
    settings: Settings
    admin: httpx.Client

    def create_key(self, **fields: Any) -> dict[str, Any]:
        """An org (unless given) and a virtual key; returns the key object with its secret."""
        if "org_id" not in fields:  # org names are unique: a new org per key
            fields["org_id"] = self.post("/admin/orgs", {"name": f"acme-{uuid.uuid4().hex[:8]}"})[
                "id"
            ]
        return self.post("/admin/keys", {"name": "test-key", **fields})

    def create_budget(self, **fields: Any) -> dict[str, Any]:
        """A budget (monthly in UTC unless given) from the admin API."""
        return self.post("/admin/budgets", {"period": "monthly", "timezone": "UTC", **fields})

    def create_pagerduty(self, url: str, *event_types: str) -> dict[str, Any]:
        """A PagerDuty endpoint at ``url`` (routing key ``R0UT1NGKEY``) of ``event_types``."""
        return self.post(
            "/admin/webhooks",
            {
                "url": url,
                "kind": "pagerduty",
                "event_types": list(event_types),
                "config": {"routing_key": "R0UT1NGKEY"},
            },
        )

    def post(self, path: str, body: dict[str, Any], status: int = 201) -> Any:
        response = self.admin.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        response = self.admin.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def cut_stream(self, key: str, body: dict[str, Any], fake: FakeUpstream) -> None:
        """A streamed chat call of ``body`` that ``fake`` cuts after four events, before
        its usage: the gateway bills it on an estimate (``incomplete``)."""
        fake.drop_stream_after = 4
        try:
            with (
                httpx.Client(timeout=30) as http,
                http.stream(
                    "POST",
                    f"{self.url}/v1/chat/completions",
                    json={**body, "stream": True},
                    headers={"authorization": f"Bearer {key}"},
                ) as response,
            ):
                list(response.iter_lines())
        finally:
            fake.drop_stream_after = None

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger row, flushed first (runs on the gateway's own loop)."""
        return self.run(self._ledger())

    async def _ledger(self) -> list[dict[str, Any]]:
        from spendgate.store.ledger import ledger_rows

        await self.app.services.ledger.flush()
        return await ledger_rows(self.app.services.engine, limit=10_000)

    def run(self, coro: Any) -> Any:
        loop = self.app.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


def start_gateway(
    database_url: str,
    upstream_url: str,
    tmp_path: Path,
    *,
    extra_config: str = "",
    gateway_config_lines: str = "",
    demo: bool = False,
    env_extra: dict[str, str] | None = None,
    wrap: Callable[[Gateway], Any] | None = None,
) -> RunningGateway:
    """A gateway served in a thread; ``wrap`` (given the app) returns the ASGI app that
    uvicorn serves instead, e.g. one that watches every request."""
    config = gateway_config(upstream_url, tmp_path, extra_config, gateway_config_lines)
    env = {
        **UPSTREAM_SECRETS,
        "SPENDGATE_MASTER_KEY": MASTER_KEY,
        "SPENDGATE_DATABASE_URL": database_url,
        # each test's ledger spool of its own (never the working directory's)
        "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    if database_url.startswith("postgresql"):
        # the scale-out pairing: PostgreSQL for the ledger, Redis for live counters
        env["SPENDGATE_REDIS_URL"] = REDIS_URL
    # a key prefix of its own: other tests' policy changes never reach this gateway
    env["SPENDGATE_REDIS_PREFIX"] = f"sgtest:{uuid.uuid4().hex}:"
    env.update(env_extra or {})
    settings = load_settings(config_path=str(config), env=env, demo=demo)
    clock = FrozenClock(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    # the fake receivers listen on 127.0.0.1; a test may still say "0" in env_extra
    app = create_app(settings, clock=clock, env={"SPENDGATE_WEBHOOK_ALLOW_PRIVATE": "1", **env})
    handle = serve_in_thread(app if wrap is None else wrap(app))
    admin = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {MASTER_KEY}"})
    return RunningGateway(handle.url, app, clock, handle, settings, admin)


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    """``start_gateway``'s options for ``gateway``: a test module overrides this fixture
    to serve more config (``extra_config``)."""
    return {"demo": True}


@pytest.fixture
def gateway(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    gateway_options: dict[str, Any],
) -> Iterator[RunningGateway]:
    running = start_gateway(database_url, upstream[1].url, tmp_path, **gateway_options)
    yield running
    running.admin.close()
    running.handle.stop()


@pytest.fixture
def receiver(gateway: RunningGateway) -> Iterator[tuple[Receiver, ServerHandle]]:
    """A webhook receiver on its own port, checking signatures at the gateway's time."""
    app = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(app)
    yield app, handle
    handle.stop()


@dataclass
class PoolWatch:
    """How many of an engine's pooled connections were checked out at once, at most."""

    out: int = 0
    most: int = 0


@contextmanager
def pool_watch(engine: Any) -> Iterator[PoolWatch]:
    """Count ``engine``'s (an ``AsyncEngine``) connections out at once while the block
    runs: a write that holds one and takes a second starves the pool under load."""
    from sqlalchemy import event

    watch = PoolWatch()

    def checkout(*_: Any) -> None:
        watch.out += 1
        watch.most = max(watch.most, watch.out)

    def checkin(*_: Any) -> None:
        watch.out -= 1

    event.listen(engine.sync_engine, "checkout", checkout)
    event.listen(engine.sync_engine, "checkin", checkin)
    try:
        yield watch
    finally:
        event.remove(engine.sync_engine, "checkout", checkout)
        event.remove(engine.sync_engine, "checkin", checkin)
