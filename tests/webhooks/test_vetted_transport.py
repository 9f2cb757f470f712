"""Deliveries connect to the addresses vetted for them, not to a second DNS answer.

The resolver is the seam: a test hands the worker one that answers what a rebinding name
answers. Receivers are real sockets on 127.0.0.1; :class:`LocalNetwork` is this machine
as the whole network, so a public address can be "reached" (or not) without the internet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.store import EndpointSpec, WebhookStore, list_deliveries
from spendgate.webhooks.vetted_transport import VettedTransport, VettingBackend
from tests.webhooks.test_webhooks_delivery import BOX, SLACK_PATH, SOFT, World, serve, world

__all__ = ["serve", "world"]  # fixtures shared with the delivery tests

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

PUBLIC = "93.184.215.14"  # global addresses; LocalNetwork decides whether they answer
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


@dataclass
class RebindingDNS:
    """Answers ``PUBLIC`` to the first ``public_answers`` queries, ``127.0.0.1`` after:
    a name with a zero TTL whose owner switches it once it has passed a check."""

    public_answers: int
    queries: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.queries.append(host)
        return [PUBLIC] if len(self.queries) <= self.public_answers else ["127.0.0.1"]


def static_dns(names: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return names[host]

    return resolve


class LocalNetwork(httpcore.AnyIOBackend):
    """Connects loopback addresses, and addresses in ``routes`` to the loopback address
    they map to; anything else is unreachable. Records every address asked for."""

    def __init__(self, routes: dict[str, str] | None = None) -> None:
        self.routes = routes or {}
        self.asked: list[str] = []

    async def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append(host)
        target = self.routes.get(host, host)
        if not ipaddress.ip_address(target).is_loopback:
            raise httpcore.ConnectError(f"{host} is unreachable from the test network")
        return await super().connect_tcp(target, port, *args, **kwargs)


async def endpoint(
    world: World, url: str, resolve: Any, *, allow_private: bool = False, kind: str = "webhook"
) -> tuple[dict[str, Any], str]:
    """An endpoint made through a store that checks with ``resolve``."""
    store = WebhookStore(world.engine, BOX, allow_private=allow_private, resolve=resolve)
    config = {"routing_key": "R0UT1NGKEY"} if kind == "pagerduty" else {}
    return await store.create(EndpointSpec(url, kind=kind, config=config), world.clock.now())


async def delivery(world: World, endpoint: dict[str, Any]) -> dict[str, Any]:
    [only] = await list_deliveries(world.engine, endpoint["id"])
    return only


def receiver(serve: Any) -> tuple[Receiver, int]:
    app = Receiver()
    port = urlsplit(serve(app)).port
    assert port is not None
    return app, port


@pytest.mark.parametrize("kind", ["webhook", "slack", "pagerduty"])
async def test_a_rebinding_name_never_reaches_a_local_receiver(
    world: World, serve: Any, kind: str
) -> None:
    """``localhost`` made to answer a public address to the endpoint check and to the
    delivery's one lookup, loopback afterwards. The first attempt goes to the public
    address it vetted (unreachable here), the retry is refused at its lookup: the local
    receiver hears nothing. (Before the fix the worker checked with the resolver and httpx
    looked the name up again, reaching 127.0.0.1.)"""
    app, port = receiver(serve)
    dns = RebindingDNS(public_answers=2)
    path = SLACK_PATH if kind == "slack" else "hook"
    made, _ = await endpoint(world, f"http://localhost:{port}/{path}", dns, kind=kind)
    network = LocalNetwork()
    transport = VettedTransport(allow_private=False, resolve=dns, network=network)
    first = world.worker(allow_private=False, transport=transport)
    await world.emit()
    assert await first.run_once() == 1
    assert network.asked == [PUBLIC]
    assert "is unreachable from the test network" in (await delivery(world, made))["last_error"]
    world.clock.advance(60)
    assert await first.run_once() == 1
    assert network.asked == [PUBLIC] and app.received == []
    assert len(dns.queries) == 3  # the check, then one lookup per attempt
    retried = await delivery(world, made)
    assert retried["status"] == "pending"
    assert "non-public address 127.0.0.1" in retried["last_error"]


async def test_the_default_worker_refuses_a_name_rebound_inward(world: World, serve: Any) -> None:
    """The worker's own transport (no test network) vets with the resolver it is given:
    public at the check, loopback at the delivery, nothing sent."""
    app, port = receiver(serve)
    dns = RebindingDNS(public_answers=1)
    made, _ = await endpoint(world, f"http://localhost:{port}/hook", dns)
    await world.emit()
    assert await world.worker(allow_private=False, resolve=dns).run_once() == 1
    assert app.received == [] and len(dns.queries) == 2
    assert "non-public address 127.0.0.1" in (await delivery(world, made))["last_error"]


async def test_a_public_target_gets_the_signed_delivery(world: World, serve: Any) -> None:
    """Private targets refused, a name answering two public addresses, the first
    unreachable: delivered to the second (the test network routes it to the receiver),
    signature verified, ``Host`` the name."""
    app, port = receiver(serve)
    dns = static_dns({"hooks.example": [PUBLIC_V6, PUBLIC]})
    made, secret = await endpoint(world, f"http://hooks.example:{port}/hook", dns)
    app.secrets, app.now = [secret], world.clock.now
    network = LocalNetwork(routes={PUBLIC: "127.0.0.1"})
    transport = VettedTransport(allow_private=False, resolve=dns, network=network)
    await world.emit()
    assert await world.worker(allow_private=False, transport=transport).run_once() == 1
    [got] = app.received
    assert got.verified, got.error
    assert got.headers["host"] == f"hooks.example:{port}"
    assert network.asked == [PUBLIC_V6, PUBLIC] and got.json()["data"] == SOFT
    assert (await delivery(world, made))["status"] == "succeeded"


async def test_private_allowed_connects_where_the_resolver_said(world: World, serve: Any) -> None:
    """With private targets allowed the local receiver is reached, at the address the
    worker's resolver answered (a name the system cannot resolve), signed."""
    app, port = receiver(serve)
    dns = static_dns({"receiver.invalid": ["127.0.0.1"]})
    url = f"http://receiver.invalid:{port}/hook"
    made, secret = await endpoint(world, url, dns, allow_private=True)
    app.secrets, app.now = [secret], world.clock.now
    await world.emit()
    assert await world.worker(resolve=dns).run_once() == 1
    [got] = app.received
    assert got.verified, got.error
    assert (await delivery(world, made))["status"] == "succeeded"


# -- TLS: the vetted address is connected to, the certificate checked against the name --


@dataclass
class Authority:
    """A throwaway CA and a server certificate it signed for ``name``."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spendgate test CA")])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def server_context(self, name: str, tmp: Path) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = tmp / f"{name}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
        return context

    def client_context(self) -> ssl.SSLContext:
        pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        return ssl.create_default_context(cadata=pem)


def _builder(subject: x509.Name, issuer: x509.Name, public: Any) -> x509.CertificateBuilder:
    start = datetime.now(UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=2))
    )


@dataclass
class TlsReceiver:
    """An HTTPS server on 127.0.0.1 answering 204; records the SNI names and bodies."""

    server_names: list[str | None] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_https_is_verified_against_the_name_not_the_address(
    world: World, tmp_path: Path
) -> None:
    """``hooks.test`` resolved by the worker's resolver to 127.0.0.1: the TLS handshake
    sends ``hooks.test`` as SNI and accepts a certificate for it; a certificate for
    another name is rejected although the address is the same."""
    authority = Authority.make()
    tls = TlsReceiver()
    context = authority.server_context("hooks.test", tmp_path)
    context.sni_callback = lambda _sock, name, _ctx: tls.server_names.append(name)
    server = await asyncio.start_server(tls.handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    wrong = await asyncio.start_server(
        tls.handle, "127.0.0.1", 0, ssl=authority.server_context("other.test", tmp_path)
    )
    wrong_port = wrong.sockets[0].getsockname()[1]
    dns = static_dns({"hooks.test": ["127.0.0.1"]})
    good, _ = await endpoint(world, f"https://hooks.test:{port}/hook", dns, allow_private=True)
    bad, _ = await endpoint(world, f"https://hooks.test:{wrong_port}/hook", dns, allow_private=True)
    await world.emit()
    transport = VettedTransport(allow_private=True, resolve=dns, verify=authority.client_context())
    try:
        assert await world.worker(transport=transport).run_once() == 2
    finally:
        for each in (server, wrong):
            each.close()
            await each.wait_closed()
    assert tls.server_names == ["hooks.test"] and len(tls.bodies) == 1
    assert (await delivery(world, good))["status"] == "succeeded"
    assert "certificate" in (await delivery(world, bad))["last_error"].lower()


async def test_a_resolver_that_hangs_is_cut_off_by_the_connect_timeout(database_url: str) -> None:
    """The lookup is part of connecting: a resolver that never answers ends the attempt at
    the connect timeout (a ConnectTimeout the worker logs and retries), not never."""

    async def hang(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        return []

    backend = VettingBackend(allow_private=True, resolve=hang)
    with pytest.raises(httpcore.ConnectTimeout):
        # the outer bound only keeps a regression from hanging the suite
        await asyncio.wait_for(backend.connect_tcp("hooks.test", 443, timeout=0.05), 30)
