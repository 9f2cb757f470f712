"""Where spendgate may send webhooks: no requests into private networks unless allowed.

``http``/``https`` only. The host is resolved and *every* address it resolves to must be
public (``ipaddress``'s ``is_global``, not multicast); loopback, private, link-local,
carrier-grade NAT, reserved and unspecified addresses are refused unless private
targets are allowed (``SPENDGATE_WEBHOOK_ALLOW_PRIVATE=1``). The worker checks again
before each attempt, so a name that later resolves inward is caught too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from spendgate.errors import ValidationFailed

Resolver = Callable[[str, int], Awaitable[list[str]]]


class TargetRefused(ValidationFailed):
    code = "webhook_target_refused"


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"url: host {host!r} does not resolve ({exc})", param="url") from exc
    return [str(info[4][0]) for info in infos]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def parse_target(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL; refuses anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url: not a valid URL: {exc}", param="url") from exc
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("url: only http and https URLs are allowed", param="url")
    if not parts.hostname:
        raise TargetRefused("url: a host is required", param="url")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(
    url: str, *, allow_private: bool, resolve: Resolver = system_resolver
) -> None:
    """Raise :class:`TargetRefused` unless ``url`` may receive webhooks."""
    host, port = parse_target(url)
    if allow_private:
        return
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = await resolve(host, port)
    if not addresses:
        raise TargetRefused(f"url: host {host!r} does not resolve", param="url")
    for address in addresses:
        if not is_public(address):
            raise TargetRefused(
                f"url: {host} resolves to non-public address {address}; private and loopback "
                "targets need SPENDGATE_WEBHOOK_ALLOW_PRIVATE=1",
                param="url",
            )
