"""Deliveries connect only to addresses just vetted: no DNS rebinding into private networks.

Checking a name and then letting the HTTP client resolve it again leaves a gap: a name
that answers a public address to the check and ``127.0.0.1`` (or ``169.254.169.254``)
to the connect gets through. So the check happens where the socket is opened:
:class:`VettingBackend` is the ``httpcore`` network backend under the delivery client.
For each new connection it resolves the host once (with the resolver handed in), refuses
the whole answer if *any* address in it may not be reached (:func:`targets.vet`), and
connects to those same addresses, in the resolver's order; a refused or unreachable
address moves on to the next one, a timeout ends the attempt. TLS is unchanged:
``httpcore`` wraps the socket with the URL's host name as SNI and verifies the
certificate against that name. Pooled connections are keyed by scheme, host and port as
usual and were vetted when opened; redirects are never followed, proxies from the
environment are not used (the proxy would resolve the name itself) and Unix sockets are
refused.

    transport = VettedTransport(allow_private=False, resolve=system_resolver)
    async with httpx.AsyncClient(transport=transport) as http: ...
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import httpcore
import httpx

from spendgate.webhooks.targets import Resolver, vet

SocketOption = typing.Any  # httpcore's SOCKET_OPTION union, not exported


class VettingBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses :func:`targets.vet` allows;
    ``network`` opens them (``httpcore.AnyIOBackend``; tests: a network without the
    internet)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._network = network or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # the lookup counts against the connect timeout: a slow resolver cannot stall a worker
        try:
            addresses = await asyncio.wait_for(
                vet(host, port, allow_private=self._allow_private, resolve=self._resolve),
                timeout,
            )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"looking up {host} took over {timeout} s") from exc
        options = list(socket_options or ())
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._network.connect_tcp(
                    address, port, timeout, local_address, options
                )
            except httpcore.ConnectError as exc:  # refused or unreachable: the next one
                failure = exc
        assert failure is not None  # vet() never answers an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhook deliveries do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class VettedTransport(httpx.AsyncHTTPTransport):
    """``httpx``'s transport over a connection pool whose connections are opened by a
    :class:`VettingBackend`; ``verify``: the CAs to trust (by default certifi's, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as ``httpx`` reads them)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver,
        verify: ssl.SSLContext | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        # AsyncHTTPTransport.__init__ only builds ``_pool``; this builds it with the
        # vetting backend instead (httpx takes no network backend of its own)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=VettingBackend(
                allow_private=allow_private, resolve=resolve, network=network
            ),
        )
