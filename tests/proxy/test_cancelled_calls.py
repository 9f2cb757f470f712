"""A call cancelled by something other than the server's shutdown drain (here a request
deadline an ASGI middleware implements with ``asyncio.timeout``, which works by
cancelling the task) is still billed once, but the cancellation goes on to whoever
asked for it: the gateway must not swallow it (the deadline would never fire, its
``async with`` would end as if the call had finished)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import RunningGateway, start_gateway


class Deadline:
    """ASGI wrapper: each proxied call runs under an ``asyncio.timeout`` the test makes
    expire (``expire``); what the wrapped app did is kept in ``outcomes``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.timeouts: list[asyncio.Timeout] = []
        self.outcomes: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/chat"):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(None) as deadline:
                self.timeouts.append(deadline)
                await self.app(scope, receive, send)
        except TimeoutError:
            self.outcomes.append("timed out")  # its answer went out before: nothing to send
        else:
            self.outcomes.append("returned")

    def expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the running call's deadline pass now (on the gateway's loop)."""
        [deadline] = self.timeouts
        loop.call_soon_threadsafe(lambda: deadline.reschedule(loop.time()))


@pytest.fixture
def gateway_lines() -> str:
    """More lines of the ``[gateway]`` table of ``deadline_gateway``."""
    return ""


@pytest.fixture
def deadline_gateway(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    tmp_path: Path,
    gateway_lines: str,
) -> Iterator[tuple[RunningGateway, list[Deadline]]]:
    wrappers: list[Deadline] = []

    def wrap(app: Any) -> Deadline:
        wrappers.append(Deadline(app))
        return wrappers[0]

    running = start_gateway(
        database_url, upstream[1].url, tmp_path, wrap=wrap, gateway_config_lines=gateway_lines
    )
    yield running, wrappers
    running.admin.close()
    running.handle.stop()


def _wait_for(condition: Any) -> None:
    for _ in range(1500):
        if condition():
            return
        threading.Event().wait(0.02)
    raise AssertionError("never happened")


def cut_call(gateway: RunningGateway, wrapper: Deadline, fake: FakeUpstream) -> httpx.Response:
    """A call (not streamed) the deadline cancels once the provider has it."""
    key = gateway.create_key()["key"]
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "[[slow:20]] long reasoning"}],
        "max_tokens": 100,
    }
    answers: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(timeout=60) as http:
            answers.append(
                http.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {key}"},
                )
            )

    client = threading.Thread(target=call)
    client.start()
    _wait_for(lambda: any(r.json and "[[slow:20]]" in str(r.json) for r in fake.requests))
    assert gateway.app.loop is not None
    wrapper.expire(gateway.app.loop)
    client.join()
    return answers[0]


def test_a_call_cancelled_by_a_deadline_is_billed_once_and_stays_cancelled(
    deadline_gateway: tuple[RunningGateway, list[Deadline]], fake: FakeUpstream
) -> None:
    """The provider has the request (and bills it) when the deadline cancels the call:
    one ledger row, billed at its worst case, and the deadline fires (TimeoutError)."""
    gateway, [wrapper] = deadline_gateway
    answer = cut_call(gateway, wrapper, fake)

    assert wrapper.outcomes == ["timed out"]
    [row] = [r for r in gateway.ledger() if r["request_id"] == answer.headers["x-request-id"]]
    assert row["status"] == "incomplete" and row["usage_estimated"]
    assert row["output_tokens"] == 100 and row["cost_nanos"] > 0


@pytest.mark.parametrize("gateway_lines", ["bill_upstream_timeouts = false"])
def test_a_cut_call_not_billed_is_not_counted_as_billed_on_an_estimate(
    deadline_gateway: tuple[RunningGateway, list[Deadline]], fake: FakeUpstream
) -> None:
    """With ``bill_upstream_timeouts = false`` a cut call is booked at $0, as an
    unbilled timeout is: not ``usage_estimated`` (the usage reports' "of which
    estimated" counts calls billed on an estimate), and its client is not told it
    was billed on one."""
    gateway, [wrapper] = deadline_gateway
    answer = cut_call(gateway, wrapper, fake)

    [row] = [r for r in gateway.ledger() if r["request_id"] == answer.headers["x-request-id"]]
    assert row["status"] == "incomplete" and row["cost_nanos"] == 0
    assert not row["usage_estimated"]
    assert answer.status_code == 503 and answer.headers["x-spendgate-cost-usd"] == "0.00"
    assert "estimated" not in answer.json()["error"]["message"]


def test_a_stream_cancelled_by_a_deadline_is_billed_once_and_stays_cancelled(
    deadline_gateway: tuple[RunningGateway, list[Deadline]], fake: FakeUpstream
) -> None:
    """A stream the deadline cancels after its first event: billed once, for what the
    provider produced, and the deadline fires."""
    gateway, [wrapper] = deadline_gateway
    key = gateway.create_key()["key"]
    fake.stream_gate = threading.Event()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        with (
            httpx.Client(timeout=60) as http,
            http.stream(
                "POST",
                f"{gateway.url}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            ) as response,
        ):
            request_id = response.headers["x-request-id"]
            chunks = response.iter_raw()
            assert next(chunks).startswith(b"data: ")
            assert gateway.app.loop is not None
            wrapper.expire(gateway.app.loop)
            rest = b"".join(chunks)
    finally:
        fake.stream_gate.set()

    assert b"[DONE]" not in rest
    _wait_for(lambda: wrapper.outcomes)
    assert wrapper.outcomes == ["timed out"]
    [row] = [r for r in gateway.ledger() if r["request_id"] == request_id]
    assert row["status"] == "incomplete" and row["usage_estimated"]
