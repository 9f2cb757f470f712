"""Webhook targets: IPv6 forms that carry a loopback, metadata, private or site-local
address are refused like the address itself (issue 24, item 3), through the pure check
and through ``POST /admin/webhooks`` on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from spendgate.webhooks.targets import TargetRefused, check_target, is_public
from tests.conftest import RunningGateway, start_gateway

#: (bracketed host, what it carries) — every one must be refused
REFUSED = [
    # the four forms the security run found accepted
    ("[::7f00:1]", "IPv4-compatible loopback"),
    ("[64:ff9b::a9fe:a9fe]", "NAT64 of the metadata address"),
    ("[2002:a9fe:a9fe::]", "6to4 of the metadata address"),
    ("[fec0::1]", "site-local (deprecated)"),
    # IPv4-mapped
    ("[::ffff:127.0.0.1]", "mapped loopback"),
    ("[::ffff:7f00:1]", "mapped loopback, hex"),
    ("[::ffff:169.254.169.254]", "mapped metadata"),
    ("[::ffff:10.0.0.1]", "mapped private"),
    ("[::ffff:192.168.1.1]", "mapped private"),
    ("[::ffff:100.64.0.1]", "mapped carrier-grade NAT"),
    ("[::ffff:0.0.0.0]", "mapped unspecified"),
    # IPv4-compatible
    ("[::127.0.0.1]", "compatible loopback"),
    ("[::a9fe:a9fe]", "compatible metadata"),
    ("[::10.1.2.3]", "compatible private"),
    ("[::172.16.0.1]", "compatible private"),
    # IPv4-translated (RFC 2765)
    ("[::ffff:0:7f00:1]", "translated loopback"),
    ("[::ffff:0:a9fe:a9fe]", "translated metadata"),
    # NAT64, well-known and local-use prefixes
    ("[64:ff9b::7f00:1]", "NAT64 loopback"),
    ("[64:ff9b::10.0.0.1]", "NAT64 private"),
    ("[64:ff9b:1::a9fe:a9fe]", "local-use NAT64"),
    ("[64:ff9b:1:ffff::8.8.8.8]", "local-use NAT64 (refused whole)"),
    # 6to4
    ("[2002:7f00:1::]", "6to4 loopback"),
    ("[2002:c0a8:101::1]", "6to4 private"),
    ("[2002:a00:1:1::1]", "6to4 private"),
    # Teredo: server 65.54.227.120, client (obfuscated) 192.0.2.45 / 127.0.0.1
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "Teredo, test-net client"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "Teredo, loopback client"),
    # plain IPv6 ones that were refused before and must stay so
    ("[::1]", "loopback"),
    ("[::]", "unspecified"),
    ("[fe80::1]", "link-local"),
    ("[fd00::1]", "unique local"),
    ("[fec0:0:0:ffff::1]", "site-local"),
    ("[ff02::1]", "multicast"),
    ("[2001:db8::1]", "documentation"),
    ("[100::1]", "discard-only"),
]

ALLOWED = [
    "[2606:2800:220:1::1]",
    "[::ffff:93.184.216.34]",  # mapped public
    "[64:ff9b::5db8:d822]",  # NAT64 of 93.184.216.34
    "[2002:5db8:d822::1]",  # 6to4 of 93.184.216.34
    "93.184.216.34",
]


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"literal addresses need no DNS ({host})")


@pytest.mark.parametrize(("host", "what"), REFUSED, ids=[h for h, _ in REFUSED])
async def test_ipv6_forms_carrying_inward_addresses_are_refused(host: str, what: str) -> None:
    """Each form is refused by the check the API and the worker share, naming the url."""
    assert not is_public(host.strip("[]")), what
    with pytest.raises(TargetRefused) as refused:
        await check_target(f"http://{host}:8080/hook", allow_private=False, resolve=_no_dns)
    assert refused.value.param == "url"


@pytest.mark.parametrize("host", ALLOWED)
async def test_public_addresses_in_any_form_are_allowed(host: str) -> None:
    """A public IPv4 address inside an IPv6 form is as fine as the address itself."""
    assert is_public(host.strip("[]"))
    await check_target(f"https://{host}/hook", allow_private=False, resolve=_no_dns)


async def test_names_resolving_to_such_forms_are_refused() -> None:
    """A host name whose AAAA record is one of the forms is refused the same way."""

    async def resolve(host: str, port: int) -> list[str]:
        return {"sneaky.example": ["93.184.216.34", "64:ff9b::a9fe:a9fe"]}[host]

    with pytest.raises(TargetRefused, match="64:ff9b::a9fe:a9fe"):
        await check_target("https://sneaky.example/h", allow_private=False, resolve=resolve)


def test_admin_api_refuses_the_forms(
    database_url: str, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """Through ``POST /admin/webhooks`` with private targets not allowed: 422
    ``webhook_target_refused`` naming ``url`` for every form, on both databases."""
    gw: RunningGateway = start_gateway(
        database_url,
        upstream[1].url,
        tmp_path,
        env_extra={"SPENDGATE_WEBHOOK_ALLOW_PRIVATE": "0"},
    )
    try:
        org = gw.post("/admin/orgs", {"name": "o"})["id"]
        for host, what in REFUSED:
            answer = gw.admin.post(
                "/admin/webhooks",
                json={"url": f"http://{host}/hook", "scope_type": "org", "scope_id": org},
            )
            assert answer.status_code == 422, (host, what, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "webhook_target_refused" and error["param"] == "url"
    finally:
        gw.admin.close()
        gw.handle.stop()
