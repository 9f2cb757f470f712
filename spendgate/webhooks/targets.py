"""Where spendgate may send webhooks: no requests into private networks unless allowed.

``http``/``https`` only. The host is resolved and *every* address it resolves to must be
public (``ipaddress``'s ``is_global``, not multicast); loopback, private, link-local,
carrier-grade NAT, reserved and unspecified addresses are refused unless private
targets are allowed (``SPENDGATE_WEBHOOK_ALLOW_PRIVATE=1``). A name whose answer mixes
public and private addresses is refused, not filtered: that mix is what a rebinding name
answers. Endpoints are checked when made or changed; deliveries are vetted again where
they connect, against the very addresses connected to (``vetted_transport``), so a name
that later resolves inward is caught too.

IPv6 addresses that carry an IPv4 address inside are judged by that address as well,
since a translator or tunnel on the way may deliver them to it:

    form                          example                       carries
    IPv4-mapped   ::ffff:0:0/96   [::ffff:127.0.0.1]            the last 32 bits
    IPv4-compat.  ::/96           [::7f00:1]                    the last 32 bits
    IPv4-transl.  ::ffff:0:0:0/96 [::ffff:0:7f00:1]             the last 32 bits
    NAT64         64:ff9b::/96    [64:ff9b::a9fe:a9fe]          the last 32 bits
    6to4          2002::/16       [2002:a9fe:a9fe::]            bits 16-47
    Teredo        2001::/32       [2001:0:…]                    server and client

The local-use NAT64 prefix ``64:ff9b:1::/48`` and the deprecated site-local
``fec0::/10`` are refused whole (neither is global; ``ipaddress`` counts both as
global).
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


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_LOW32 = 0xFFFFFFFF


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (see the table above)."""
    value = int(ip)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if value >> 32 == 0 and value > 1:  # IPv4-compatible; :: and ::1 are not
        return [ipaddress.IPv4Address(value & _LOW32)]
    if ip in _TRANSLATED or ip in _NAT64:
        return [ipaddress.IPv4Address(value & _LOW32)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def is_public(address: str) -> bool:
    """Whether ``address`` (and every IPv4 address inside it) is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local or ip in _NAT64_LOCAL:
            return False
        inner = embedded_ipv4(ip)
        if inner and not all(_global(v4) for v4 in inner):
            return False
        if ip.ipv4_mapped is not None:
            return True  # judged by the IPv4 address alone (::ffff:0:0/96 is not global)
    return _global(ip)


def _global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
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
    """Raise :class:`TargetRefused` unless ``url`` may receive webhooks (when an endpoint
    is made or changed; deliveries are vetted again as they connect: vetted_transport)."""
    host, port = parse_target(url)
    if not allow_private:
        await vet(host, port, allow_private=False, resolve=resolve)


async def vet(host: str, port: int, *, allow_private: bool, resolve: Resolver) -> list[str]:
    """The addresses ``host`` resolves to, once (an IP address is itself); refused whole
    if any of them is not public and private targets are not allowed."""
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = await resolve(host, port)
    if not addresses:
        raise TargetRefused(f"url: host {host!r} does not resolve", param="url")
    for address in addresses:
        if not allow_private and not is_public(address):
            raise TargetRefused(
                f"url: {host} resolves to non-public address {address}; private and loopback "
                "targets need SPENDGATE_WEBHOOK_ALLOW_PRIVATE=1",
                param="url",
            )
    return addresses
