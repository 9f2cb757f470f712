"""Secrets at rest: after a full scenario through the real HTTP stack (keys created,
rotated and used with the official SDKs, webhook/Slack/PagerDuty endpoints delivering,
an admin token in use), neither the database (SQLite: the raw bytes of the file and its
WAL; PostgreSQL: every row of every table as text) nor any log line nor any admin route
holds a single secret. Also: rotating the encryption key with ``spendgate webhooks
reencrypt``."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from spendgate.cli.webhooks import webhooks_app
from spendgate.observability.logs import JsonFormatter, TextFormatter
from spendgate.security.credentials import new_admin_token, new_virtual_key, shown_prefix
from spendgate.store.database import create_engine, downgrade, migrate
from spendgate.testing.fake_upstream import FakeUpstream, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.secrets_box import SecretBox
from spendgate.webhooks.store import ENCRYPTED_COLUMNS, EndpointSpec, WebhookStore
from spendgate.webhooks.tables import webhook_endpoints
from tests.conftest import MASTER_KEY, UPSTREAM_SECRETS, RunningGateway

ORG_NAME = "org-secrets-at-rest-qz7"
SLACK_SECRET = "XXXXslackSECRETpath9f3k"
SLACK_PATH = f"services/T0SAR000/B0SAR000/{SLACK_SECRET}"
PAGERDUTY_ROUTING_KEY = "R0UT1NGpdSECRET7c1e2f"
#: what a secret of each kind looks like, to catch ones this test did not know of
SHAPES = [
    re.compile(p)
    for p in (
        r"sk-sg-[A-Za-z0-9_-]{30,}",
        r"sg-admin-[A-Za-z0-9_-]{30,}",
        r"whsec_[A-Za-z0-9+/=]{20,}",
    )
]


# -- capturing ------------------------------------------------------------------------------
@contextmanager
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every logger at DEBUG into ``caplog``, including those that do not propagate to
    the root (uvicorn's); restored afterwards. Start servers (uvicorn reconfigures its
    loggers) before entering."""
    caplog.set_level(logging.DEBUG)
    loggers = [
        lg
        for lg in list(logging.root.manager.loggerDict.values())
        if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level) for lg in loggers]
    fed = [lg for lg in loggers if not lg.propagate]
    for lg in loggers:
        if lg.level > logging.DEBUG:
            lg.setLevel(logging.DEBUG)
    for lg in fed:
        lg.addHandler(caplog.handler)
    try:
        yield
    finally:
        for lg in fed:
            lg.removeHandler(caplog.handler)
        for lg, level in saved:
            lg.setLevel(level)


def log_text(records: list[logging.LogRecord], *, not_from: int | None) -> str:
    """Each record as rendered (message, exception, stack), and as the JSON line and the
    text line ``spendgate serve`` writes (every ``extra`` field included), but records of
    the thread ``not_from`` (the receiver standing in for Slack and PagerDuty, whose
    access log names the paths it was posted to)."""
    lines = []
    as_json, as_text = JsonFormatter(), TextFormatter()
    for record in records:
        if record.thread == not_from:
            continue
        lines.append(f"{record.name} {record.levelname} {record.getMessage()}")
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            lines.append(record.stack_info)
        lines.append(as_json.format(record))
        lines.append(as_text.format(record))
    return "\n".join(lines)


def sqlite_bytes(database_url: str) -> bytes:
    path = Path(database_url.removeprefix("sqlite:///"))
    files = [path, path.with_name(path.name + "-wal")]
    assert path.exists()
    return b"".join(f.read_bytes() for f in files if f.exists())


async def postgres_text(database_url: str) -> str:
    """Every row of every table of the public schema, cast to text."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        assert "webhook_endpoints" in tables and "virtual_keys" in tables
        rows = []
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            rows += [
                f"{table}: {r[0]}" for r in await conn.fetch(f"SELECT t::text FROM {quoted} t")
            ]  # table names from the catalog
        return "\n".join(rows)
    finally:
        await conn.close()


def database_text(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        # ASCII bytes always decode as themselves, whatever surrounds them
        return sqlite_bytes(database_url).decode("utf-8", "replace")
    return asyncio.run(postgres_text(database_url))


@dataclass
class Secrets:
    """Every secret of the scenario, by name."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> str:
        assert value and name not in self.values
        self.values[name] = value
        if value.startswith("whsec_"):
            self.values[f"{name} (base64 part)"] = value.removeprefix("whsec_")
        return value

    def context(self, text: str, around: int = 100) -> list[str]:
        """Where secrets occur, with the secrets themselves replaced by their names (for
        failure messages: the test must not print secrets either)."""
        out = []
        for value in self.values.values():
            at = text.find(value)
            if at >= 0:
                snippet = text[max(0, at - around) : at + len(value) + around]
                for name, other in sorted(self.values.items(), key=lambda i: -len(i[1])):
                    snippet = snippet.replace(other, f"<{name}>")
                out.append("".join(c if c.isprintable() else "." for c in snippet))
        return out

    def found_in(self, text: str) -> list[str]:
        named = [name for name, value in self.values.items() if value in text]
        shaped = [
            f"something shaped like {m.group(0)[:10]}…"
            for shape in SHAPES
            for m in shape.finditer(text)
        ]
        return named + shaped


# -- the scenario ---------------------------------------------------------------------------
def wait_for(condition: Any, seconds: float = 120.0) -> None:  # a guard against hanging
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_scenario(
    gateway: RunningGateway,
    fake: FakeUpstream,
    receiver: Receiver,
    receiver_url: str,
    found: Secrets,
) -> dict[str, Any]:
    """Everything that handles a secret, through HTTP; returns ids and shown values."""
    admin = gateway.admin
    found.add("master key", MASTER_KEY)
    for name, value in UPSTREAM_SECRETS.items():
        found.add(f"provider key {name}", value)

    org = gateway.post("/admin/orgs", {"name": ORG_NAME})["id"]
    team = gateway.post("/admin/teams", {"name": "search", "org_id": org})["id"]
    user = gateway.post(
        "/admin/users", {"email": "ana@acme.io", "role": "org_admin", "org_id": org}
    )["id"]

    slack_url = found.add("Slack URL", f"{receiver_url}/{SLACK_PATH}")
    found.add("Slack URL secret path", SLACK_PATH)
    found.add("Slack URL secret part", SLACK_SECRET)
    scope = {"scope_type": "org", "scope_id": org, "event_types": ["key.*"]}
    hook = gateway.post("/admin/webhooks", {"url": f"{receiver_url}/hook", **scope})
    slack = gateway.post("/admin/webhooks", {"url": slack_url, "kind": "slack", **scope})
    pagerduty = gateway.post(
        "/admin/webhooks",
        {
            "url": f"{receiver_url}/v2/enqueue",
            "kind": "pagerduty",
            **scope,
            "config": {"routing_key": found.add("PagerDuty routing key", PAGERDUTY_ROUTING_KEY)},
        },
    )
    for n, created in enumerate((hook, slack, pagerduty)):
        found.add(f"webhook secret {n}", created["secret"])
    rotated = admin.post(
        f"/admin/webhooks/{hook['id']}/rotate-secret", json={"overlap_seconds": 3600}
    )
    assert rotated.status_code == 200, rotated.text
    found.add("rotated webhook secret", rotated.json()["secret"])
    receiver.secrets = [
        v for k, v in found.values.items() if k.startswith(("webhook secret", "rotated webhook"))
    ]

    first = gateway.post("/admin/keys", {"name": "search-prod", "org_id": org, "team_id": team})
    second = gateway.post("/admin/keys", {"name": "crawler", "org_id": org, "team_id": team})
    found.add("virtual key 1 (before rotation)", first["key"])
    found.add("virtual key 2", second["key"])
    rotation = admin.post(f"/admin/keys/{first['id']}/rotate")
    assert rotation.status_code == 200, rotation.text
    found.add("virtual key 1 (after rotation)", rotation.json()["key"])

    token = gateway.post("/admin/tokens", {"user_id": user, "name": "ops laptop"})
    found.add("admin token", token["token"])
    as_admin = {"authorization": f"Bearer {token['token']}"}
    listed = httpx.get(f"{gateway.url}/admin/keys", headers=as_admin)
    assert listed.status_code == 200 and {k["id"] for k in listed.json()} == {
        first["id"],
        second["id"],
    }
    third = httpx.post(
        f"{gateway.url}/admin/keys",
        headers=as_admin,
        json={"name": "by-token", "org_id": org, "team_id": team},
    )
    assert third.status_code == 201, third.text
    found.add("virtual key 3 (made with the admin token)", third.json()["key"])

    # wrong credentials a caller might have mistyped are secrets too
    for path, bogus in (
        ("/admin/keys", found.add("unknown admin token", new_admin_token())),
        ("/admin/orgs", found.add("unknown master key", "sg-master-wrong-9")),
        ("/v1/models", found.add("unknown virtual key", new_virtual_key())),
    ):
        answer = httpx.get(f"{gateway.url}{path}", headers={"authorization": f"Bearer {bogus}"})
        assert answer.status_code == 401, answer.text

    base = f"{gateway.url}/v1"
    for key in (rotation.json()["key"], second["key"], third.json()["key"]):
        client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert list(stream)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=second["key"], max_retries=0)
    assert claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hello"}]
    ).content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key=first["key"], max_retries=0).models.list()
    presented = {
        h.get("authorization") or h.get("x-api-key") for h in (r.headers for r in fake.requests)
    }
    assert f"Bearer {UPSTREAM_SECRETS['OPENAI_KEY']}" in presented  # the gateway used them
    assert UPSTREAM_SECRETS["ANTHROPIC_KEY"] in presented

    revoked = admin.post(f"/admin/keys/{second['id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    # 3 endpoints × (3 key.created + 1 key.revoked), delivered by the gateway's own worker
    wait_for(lambda: len(receiver.received) >= 12)
    assert all(r.verified for r in receiver.received)
    assert {r.path for r in receiver.received} == {"/hook", f"/{SLACK_PATH}", "/v2/enqueue"}
    assert any(r.json().get("routing_key") == PAGERDUTY_ROUTING_KEY for r in receiver.received)
    gateway.ledger()  # flushed
    return {
        "org": org,
        "key_prefix": second["key_prefix"],
        "slack_id": slack["id"],
        "slack_shown": slack["url"],
        "endpoint_ids": [hook["id"], slack["id"], pagerduty["id"]],
        "key_ids": [first["id"], second["id"], third.json()["id"]],
        "token_id": token["id"],
    }


def admin_answers(gateway: RunningGateway, shown: dict[str, Any]) -> dict[str, str]:
    """The body of every parameterless GET route of the admin API, and of each object's."""
    paths = [
        p
        for p, ops in gateway.get("/openapi.json")["paths"].items()
        if p.startswith("/admin") and "get" in ops and "{" not in p
    ]
    assert {"/admin/keys", "/admin/webhooks", "/admin/tokens", "/admin/audit"} <= set(paths)
    paths += [f"/admin/keys/{k}" for k in shown["key_ids"]]
    paths += [f"/admin/webhooks/{e}" for e in shown["endpoint_ids"]]
    paths += [f"/admin/webhooks/{e}/deliveries" for e in shown["endpoint_ids"]]
    paths += [
        f"/admin/tokens/{shown['token_id']}",
        "/admin/audit/export?format=jsonl",
        "/admin/audit/export?format=csv",
        "/admin/usage?group_by=key,model",
    ]
    answers = {}
    for path in paths:
        response = gateway.admin.get(path)
        assert response.status_code < 500, (path, response.text)
        answers[path] = response.text
    return answers


def test_no_secret_at_rest_in_logs_or_in_answers(
    gateway: RunningGateway, fake: FakeUpstream, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The scenario's secrets appear nowhere: database, logs (setup and run), admin routes.
    Known non-secret values stored alongside are found, so the search itself works."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    found = Secrets()
    try:
        with every_log(caplog):
            shown = run_scenario(gateway, fake, receiver, handle.url, found)
            answers = admin_answers(gateway, shown)
    finally:
        handle.stop()

    stored = database_text(database_url)
    logs = log_text(
        caplog.get_records("setup") + caplog.get_records("call"), not_from=handle.thread.ident
    )
    assert found.found_in(stored) == [], found.context(stored)
    assert found.found_in(logs) == [], found.context(logs)
    leaked = {path: found.found_in(text) for path, text in answers.items()}
    assert {path: names for path, names in leaked.items() if names} == {}

    # the search works: what was stored and logged next to the secrets is found
    assert ORG_NAME in stored and shown["key_prefix"] in stored
    assert shown["slack_shown"] in stored and "T…/B…/…" in shown["slack_shown"]
    assert "/v1/chat/completions" in logs  # uvicorn's access log, from the gateway thread
    assert '"logger":"spendgate.webhooks"' in logs  # ... and the JSON lines were searched
    assert '"request_id":"req_' in logs  # with the request ids they carry
    assert "webhook delivery" in logs  # the gateway's worker, at INFO
    assert f"POST {shown['slack_shown']}" in logs  # httpx, with the Slack URL masked
    assert "aiosqlite" in logs or database_url.startswith("postgresql")
    planted = found.found_in(stored + " " + MASTER_KEY)
    assert planted == ["master key"]  # ... and would find a secret if one were there
    assert shown["key_prefix"] in answers["/admin/keys"]
    assert shown["slack_shown"] in answers["/admin/webhooks"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_virtual_key_is_not_logged(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    text = "\n".join(r.getMessage() for r in caplog.get_records("setup"))
    assert not SHAPES[0].search(text)


# -- rotating the encryption key ------------------------------------------------------------
def test_reencrypt_moves_every_stored_secret_to_the_newest_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spendgate webhooks reencrypt`` with ``SPENDGATE_SECRET_KEY=new,old`` rewrites
    signing secrets (current and previous), PagerDuty keys and Slack URLs (sealing a
    plaintext one from before revision 0008) so the new key alone reads them; a token no
    key reads is reported (exit 1); a second run has nothing to do."""
    database_url = f"sqlite:///{tmp_path / 'rotate.db'}"
    now = datetime(2026, 3, 10, tzinfo=UTC)
    slack_url = f"https://hooks.slack.com/{SLACK_PATH}"

    async def setup() -> dict[str, str]:
        engine = create_engine(database_url)
        try:
            await migrate(engine)
            old = WebhookStore(engine, SecretBox("old-key"), allow_private=True)
            hook, _ = await old.create(EndpointSpec(url="http://127.0.0.1:9/hook"), now)
            await old.rotate_secret(hook["id"], now)
            slack, _ = await old.create(EndpointSpec(url=slack_url, kind="slack"), now)
            legacy, _ = await old.create(EndpointSpec(url=slack_url, kind="slack"), now)
            async with engine.begin() as conn:  # as revision 0007 stored Slack URLs
                await conn.execute(
                    webhook_endpoints.update()
                    .where(webhook_endpoints.c.id == legacy["id"])
                    .values(url=slack_url, url_encrypted=None)
                )
            pagerduty, _ = await old.create(
                EndpointSpec(
                    url="http://127.0.0.1:9/pd",
                    kind="pagerduty",
                    config={"routing_key": PAGERDUTY_ROUTING_KEY},
                ),
                now,
            )
            lost = WebhookStore(engine, SecretBox("lost-key"), allow_private=True)
            stranger, _ = await lost.create(EndpointSpec(url="http://127.0.0.1:9/x"), now)
            return {
                "hook": hook["id"],
                "slack": slack["id"],
                "legacy": legacy["id"],
                "pagerduty": pagerduty["id"],
                "stranger": stranger["id"],
            }
        finally:
            await engine.dispose()

    async def rows() -> list[dict[str, Any]]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                return [
                    dict(r._mapping)
                    for r in await conn.execute(
                        sa.select(webhook_endpoints).order_by(webhook_endpoints.c.id)
                    )
                ]
        finally:
            await engine.dispose()

    async def forget(endpoint_id: str) -> None:
        engine = create_engine(database_url)
        try:
            await WebhookStore(engine, SecretBox("any")).delete(endpoint_id)
        finally:
            await engine.dispose()

    ids = asyncio.run(setup())
    monkeypatch.setenv("SPENDGATE_SECRET_KEY", "new-key, old-key")
    runner = CliRunner()

    def reencrypt(code: int) -> dict[str, Any]:
        result = runner.invoke(
            webhooks_app, ["reencrypt", "--database-url", database_url, "--json"]
        )
        assert result.exit_code == code, result.output
        return dict(json.loads(result.stdout))

    first = reencrypt(1)
    assert first == {"endpoints": 5, "rewritten": 4, "sealed": 1, "unreadable": [ids["stranger"]]}
    asyncio.run(forget(ids["stranger"]))
    assert reencrypt(0) == {"endpoints": 4, "rewritten": 0, "sealed": 0, "unreadable": []}

    new = SecretBox("new-key")
    reader = create_engine(database_url)
    store = WebhookStore(reader, new)  # decrypts the rows read above; no I/O
    by_id = {r["id"]: r for r in asyncio.run(rows())}
    for row in by_id.values():
        assert all(new.is_current(row[c]) for c in ENCRYPTED_COLUMNS if row[c] is not None)
        assert store.secrets_of(row)[0].startswith("whsec_")
    assert store.url_of(by_id[ids["slack"]]) == store.url_of(by_id[ids["legacy"]]) == slack_url
    assert SLACK_SECRET not in str(by_id)
    assert store.config_of(by_id[ids["pagerduty"]]) == {"routing_key": PAGERDUTY_ROUTING_KEY}
    assert by_id[ids["hook"]]["previous_secret_encrypted"] is not None
    asyncio.run(reader.dispose())

    monkeypatch.delenv("SPENDGATE_SECRET_KEY")
    monkeypatch.delenv("SPENDGATE_MASTER_KEY", raising=False)
    result = runner.invoke(webhooks_app, ["reencrypt", "--database-url", database_url])
    assert result.exit_code == 2


async def test_migration_0008_down_and_up_keeps_slack_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downgrading writes the real Slack URL back (with the key from the environment);
    upgrading again leaves it for the gateway to seal."""
    monkeypatch.setenv("SPENDGATE_SECRET_KEY", "downgrade-key")
    engine = create_engine(f"sqlite:///{tmp_path / 'down.db'}")
    url = f"https://hooks.slack.com/{SLACK_PATH}"
    try:
        await migrate(engine)
        store = WebhookStore(engine, SecretBox("downgrade-key"), allow_private=True)
        endpoint, _ = await store.create(
            EndpointSpec(url=url, kind="slack"), datetime(2026, 3, 10, tzinfo=UTC)
        )
        await downgrade(engine, "0007")
        async with engine.connect() as conn:
            assert (
                await conn.execute(sa.text("SELECT url FROM webhook_endpoints"))
            ).scalar_one() == url
        await migrate(engine)
        assert (await store.get(endpoint["id"]))[
            "url"
        ] == "https://hooks.slack.com/services/T…/B…/…"
        assert await store.seal_urls() == 1
        assert store.url_of(await store.row(endpoint["id"])) == url
    finally:
        await engine.dispose()


def test_secret_shapes_match_real_secrets() -> None:
    """The shape checks above recognise every kind of secret spendgate makes."""
    for secret in (
        new_virtual_key(),
        new_admin_token(),
        "whsec_" + secrets.token_urlsafe(24).replace("-", "+").replace("_", "/"),
    ):
        assert any(shape.fullmatch(secret) for shape in SHAPES), secret
    assert not any(shape.search(shown_prefix(new_virtual_key())) for shape in SHAPES)
