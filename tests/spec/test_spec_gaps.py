"""SPEC-audit gaps: tests that state a promise of /work/shared/SPEC.md the product does
not keep yet. They are expected to FAIL on main until the gap is closed."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from tests.conftest import RunningGateway


def _events(gw: RunningGateway, type_: str) -> list[dict[str, Any]]:
    gw.run(gw.app.services.drain())
    return list(gw.get("/admin/events", type=type_, limit=1000))


def test_a_key_close_to_its_expiry_raises_key_expiring(gateway: RunningGateway) -> None:
    """SPEC §6 and §13 list ``key.expiring`` among the events (the catalog offers it to
    webhook filters and preferences); nothing emits it. A key that expires in a day,
    after the gateway's periodic work has run, must have produced one ``key.expiring``
    event naming it (once, however often the periodic work runs)."""
    expires = (gateway.clock.now() + timedelta(days=1)).isoformat()
    key = gateway.create_key(expires_at=expires)
    for _ in range(2):
        gateway.run(gateway.app.services.enforcer.refresh())
        gateway.run(gateway.app.services.enforcer.announce_expired_exceptions())
        gateway.run(gateway.app._sweep("spec-audit"))
        gateway.clock.advance(3600)
    expiring = [e for e in _events(gateway, "key.expiring") if e["data"].get("key_id") == key["id"]]
    assert len(expiring) == 1, f"no key.expiring event for {key['id']} (got {expiring})"


def test_a_streamed_call_carries_the_remaining_budget_header(gateway: RunningGateway) -> None:
    """SPEC §1 ("headers on every proxied response: … the remaining budget") and §13
    (``x-spendgate-budget-remaining-usd``, the tightest budget): a non-streamed call has
    it; a streamed one does not, though the figure before the call is known at
    admission (README: "Non-streamed responses carry x-spendgate-budget-remaining-usd")."""
    import httpx

    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="5", hard_limit=True)
    body = {
        "model": "demo-small",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    seen = {}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for stream in (False, True):
            with client.stream(
                "POST",
                "/v1/chat/completions",
                json={**body, "stream": stream},
                headers={"Authorization": f"Bearer {key['key']}"},
            ) as response:
                response.read()
                assert response.status_code == 200
                seen[stream] = response.headers.get("x-spendgate-budget-remaining-usd")
    assert seen[False] is not None
    assert seen[True] is not None, "streamed response has no x-spendgate-budget-remaining-usd"


def test_a_streamed_call_says_what_was_left_when_it_was_admitted(
    gateway: RunningGateway,
) -> None:
    """On both stream wires (OpenAI and Anthropic) the header is the tightest budget's
    remaining before the stream: exactly what the call before it left (its own cost
    comes only at the end, in the ledger); the next call's figure has it taken off."""
    import anthropic
    import openai

    key = gateway.create_key()
    gateway.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "period": "monthly",
         "timezone": "UTC", "amount_usd": "5", "hard_limit": True},
    )  # fmt: skip
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    msgs: Any = [{"role": "user", "content": "hi"}]

    def whole() -> str:
        raw = oai.chat.completions.with_raw_response.create(
            model="demo-small", messages=msgs, max_tokens=10
        )
        return raw.headers["x-spendgate-budget-remaining-usd"]

    streams = {
        "openai": lambda: oai.chat.completions.with_streaming_response.create(
            model="demo-small", messages=msgs, max_tokens=10, stream=True
        ),
        "anthropic": lambda: claude.messages.with_streaming_response.create(
            model="demo-small", messages=msgs, max_tokens=10, stream=True
        ),
    }
    for wire, stream in streams.items():
        before = whole()
        with stream() as response:
            response.read()
            assert response.headers.get("x-spendgate-budget-remaining-usd") == before, wire
        assert Decimal(whole()) < Decimal(before), wire  # the stream's cost was taken off
