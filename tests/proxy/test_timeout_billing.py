"""A provider too slow to answer in time still bills a request it received: such a call
is billed at the worst case its admission held (prompt estimate + output cap), recorded
as ``timeout`` with ``usage_estimated``, and counts against budgets like any spend. A
timeout before the request went out is not billed, nor is any with
``bill_upstream_timeouts = false``. Real gateway and fake upstream, SQLite and
PostgreSQL+Redis, the openai SDK where it fits."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from spendgate.core.money import NANOS_PER_USD, format_usd
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import RunningGateway, start_gateway

#: $10 per million tokens in and out: 10,000 nano-dollars a token
NANOS_PER_TOKEN = 10_000


def slow_provider(base_url: str) -> str:
    """A provider with a half-second timeout, and a model on it at a flat rate."""
    return f"""
[providers.slow]
kind = "openai"
base_url = "{base_url}/v1"
api_key_env = "OPENAI_KEY"
timeout_seconds = 0.5

[models."flat-rate"]
provider = "slow"
upstream_model = "gpt-4o-mini"
price = {{ input_per_mtok = "10", output_per_mtok = "10" }}

[models."flat-searcher"]
provider = "slow"
upstream_model = "gpt-4.1"
price = {{ input_per_mtok = "10", output_per_mtok = "10", web_search_per_thousand = "1000" }}
"""


@pytest.fixture
def gateway_options(upstream: tuple[FakeUpstream, ServerHandle]) -> dict[str, Any]:
    return {"extra_config": slow_provider(upstream[1].url)}


def slow_body(max_tokens: int = 100, *, stream: bool = False, model: str = "flat-rate") -> bytes:
    """A request the fake upstream answers only after 3 s (the provider times out at 0.5)."""
    prompt = "[[slow:3]] summarise the quarterly report"
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def worst_case(body: bytes, max_tokens: int) -> int:
    """What admission holds for ``body``: its bytes / 4 as input (ASCII), its cap as
    output."""
    assert body.isascii()
    return (len(body) // 4 + max_tokens) * NANOS_PER_TOKEN


def post(gw: RunningGateway, key: str, body: bytes) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(gw.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)


def forwarded(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


def unbilled_504(gw: RunningGateway, response: httpx.Response) -> str:
    """A 504 that says it is not billed, its call in the ledger as an unbilled timeout;
    returns the error's message."""
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert "not billed" in error["message"]
    assert response.headers["x-spendgate-cost-usd"] == "0.00"
    [row] = gw.ledger()
    assert (row["status"], row["cost_nanos"], row["usage_estimated"]) == ("timeout", 0, False)
    return str(error["message"])


def test_a_read_timeout_is_billed_at_the_held_worst_case_and_counts_in_the_budget(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The 504 says what was booked; the ledger has the worst case to the nano-dollar;
    the budget counts it, so a hard cap with room for one such call refuses the next
    before it reaches the provider."""
    key = gateway.create_key()
    body = slow_body()
    worst = worst_case(body, 100)
    budget = gateway.create_budget(
        scope_type="key",
        scope_id=key["id"],
        amount_usd=format_usd(worst * 3 // 2),
        hard_limit=True,
        alert_percentages=[50],
    )
    response = post(gateway, key["key"], body)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert "billed at its worst case" in error["message"]
    assert format_usd(worst) in error["message"]
    assert response.headers["x-spendgate-cost-usd"] == format_usd(worst)
    assert response.headers["x-spendgate-budget-remaining-usd"] == format_usd(worst // 2)
    [row] = gateway.ledger()
    assert (row["status"], row["http_status"], row["usage_estimated"]) == ("timeout", 504, True)
    assert (row["input_tokens"], row["output_tokens"]) == (len(body) // 4, 100)
    assert row["cost_nanos"] == worst
    status = gateway.get(f"/admin/budgets/{budget['id']}/status")
    assert Decimal(status["spent_usd"]) == Decimal(format_usd(worst))
    assert "alert:50" in status["thresholds_fired"]  # two thirds spent
    sent = forwarded(fake)
    refused = post(gateway, key["key"], body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert forwarded(fake) == sent


def test_a_read_timeout_is_taken_from_a_wallet(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """A prepaid wallet pays for the timed-out call's worst case: with room for one
    such call, the next is refused (402) before it reaches the provider."""
    key = gateway.create_key()
    body = slow_body()
    worst = worst_case(body, 100)
    wallet = gateway.post(
        "/admin/wallets",
        {
            "scope_type": "key",
            "scope_id": key["id"],
            "initial_topup_usd": format_usd(worst * 3 // 2),
        },
    )
    assert post(gateway, key["key"], body).status_code == 504
    balance = gateway.get(f"/admin/wallets/{wallet['id']}")["balance_usd"]
    assert Decimal(balance) == Decimal(format_usd(worst * 3 // 2 - worst))
    sent = forwarded(fake)
    refused = post(gateway, key["key"], body)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_funds"
    assert forwarded(fake) == sent


def test_the_openai_sdk_sees_the_billed_504_and_the_usage_report_counts_it(
    gateway: RunningGateway,
) -> None:
    """Through the openai SDK: a 504 ``upstream_timeout`` whose header has the ledger's
    figure; the usage report grouped by status shows the call as ``timeout`` at that cost."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="flat-rate",
            max_tokens=40,
            messages=[{"role": "user", "content": "[[slow:3]] a long essay"}],
        )
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    [row] = gateway.ledger()
    assert row["output_tokens"] == 40 and row["usage_estimated"] is True
    told = info.value.response.headers["x-spendgate-cost-usd"]
    assert told == format_usd(row["cost_nanos"])
    assert row["cost_nanos"] == (row["input_tokens"] + 40) * NANOS_PER_TOKEN
    report = gateway.get("/admin/usage", group_by="status", org_id=key["org_id"])
    [line] = report["rows"]
    assert line["status"] == "timeout" and line["errors"] == 1
    assert line["cost_usd"] == told and report["total_cost_usd"] == told


def test_a_stalled_stream_is_billed_at_its_worst_case(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A stream whose provider falls silent past the timeout after its first event: the
    provider may still be generating, so the worst case is billed, told in the cost
    comment before the error event that ends the stream."""
    key = gateway.create_key()
    fake.stream_delay_seconds = 3.0
    body = orjson.dumps(
        {
            "model": "flat-rate",
            "max_tokens": 60,
            "stream": True,
            "messages": [{"role": "user", "content": "write a poem"}],
        }
    )
    headers = {"authorization": f"Bearer {key['key']}", "content-type": "application/json"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", content=body, headers=headers, timeout=30
    ) as response:
        raw = b"".join(response.iter_bytes())
    worst = worst_case(body, 60)
    comment = f": x-spendgate-cost-usd {format_usd(worst)} status=timeout usage=estimated"
    assert comment.encode() in raw
    assert raw.index(comment.encode()) < raw.index(b'data: {"error"')
    [row] = gateway.ledger()
    assert (row["status"], row["usage_estimated"], row["cost_nanos"]) == ("timeout", True, worst)


def test_a_stream_with_no_answer_in_time_is_a_billed_504(gateway: RunningGateway) -> None:
    """A streamed call whose provider sends nothing (not even its headers) in time: no
    stream started, so it is the 504 a non-streamed call gets, billed the same."""
    key = gateway.create_key()
    body = slow_body(30, stream=True)
    response = post(gateway, key["key"], body)
    assert response.status_code == 504, response.text
    assert response.headers["x-spendgate-cost-usd"] == format_usd(worst_case(body, 30))
    [row] = gateway.ledger()
    assert (row["status"], row["stream"], row["usage_estimated"]) == ("timeout", True, True)
    assert row["cost_nanos"] == worst_case(body, 30)


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose listen queue is full: a connect to it hangs (SYNs are dropped), so
    the request never goes out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    server.close()


def test_a_timeout_before_the_request_went_out_is_not_billed(
    database_url: str, fake: FakeUpstream, tmp_path: Path, black_hole: int
) -> None:
    """A provider that never accepts the connection: 504, nothing reached it, $0."""
    gateway = start_gateway(
        database_url,
        f"http://127.0.0.1:{black_hole}",
        tmp_path,
        extra_config=slow_provider(f"http://127.0.0.1:{black_hole}"),
    )
    try:
        key = gateway.create_key()
        message = unbilled_504(gateway, post(gateway, key["key"], slow_body()))
        assert "nothing reached it" in message
    finally:
        gateway.admin.close()
        gateway.handle.stop()


def test_bill_upstream_timeouts_false_keeps_them_at_zero(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> None:
    """An operator who prefers not to bill timeouts: the read timeout is $0 again, and
    a budget's hard cap lets the next call through."""
    gateway = start_gateway(
        database_url,
        upstream[1].url,
        tmp_path,
        extra_config=slow_provider(upstream[1].url),
        gateway_config_lines="bill_upstream_timeouts = false",
    )
    try:
        assert gateway.settings.bill_upstream_timeouts is False
        key = gateway.create_key()
        unbilled_504(gateway, post(gateway, key["key"], slow_body()))
    finally:
        gateway.admin.close()
        gateway.handle.stop()


@pytest.fixture
def error_then_silence() -> Iterator[int]:
    """A provider that reads the whole request, sends a 500's headers and the start of
    its body, then falls silent (until the test ends)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    done = threading.Event()
    clients: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            clients.append(client)
            data = b""
            while b"\r\n\r\n" not in data:
                data += client.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += client.recv(65536)
            client.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"error": '
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    server.close()
    for client in clients:
        client.close()
    thread.join(5)


@pytest.mark.parametrize("stream", [False, True])
def test_a_timeout_while_the_provider_sends_an_error_is_not_billed(
    database_url: str, fake: FakeUpstream, tmp_path: Path, error_then_silence: int, stream: bool
) -> None:
    """The provider had the request but was answering with an error (its status came,
    its body stalled): not a call it bills, so $0, and the 504 does not claim that
    nothing reached it."""
    url = f"http://127.0.0.1:{error_then_silence}"
    gateway = start_gateway(database_url, url, tmp_path, extra_config=slow_provider(url))
    try:
        key = gateway.create_key()
        message = unbilled_504(gateway, post(gateway, key["key"], slow_body(stream=stream)))
        assert "error answer (HTTP 500)" in message
        assert "nothing" not in message
    finally:
        gateway.admin.close()
        gateway.handle.stop()


def test_a_timeout_billed_with_web_searches_says_so(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A Responses call offering a web search tool, timed out: its worst case holds the
    searches it may run (``max_tool_calls``), so the bill has them, and the 504 says so
    rather than naming only the prompt and the output cap."""
    key = gateway.create_key()
    payload = {
        "model": "flat-searcher",
        "input": "[[slow:3]] what happened today",
        "max_output_tokens": 100,
        "tools": [{"type": "web_search"}],
        "max_tool_calls": 3,
    }
    body = orjson.dumps(payload)
    headers = {"authorization": f"Bearer {key['key']}", "content-type": "application/json"}
    response = httpx.post(gateway.url + "/v1/responses", content=body, headers=headers, timeout=30)
    assert response.status_code == 504, response.text
    [row] = gateway.ledger()
    assert row["cost_nanos"] >= 3 * NANOS_PER_USD  # $1 a search
    message = response.json()["error"]["message"]
    assert format_usd(row["cost_nanos"]) in message
    assert "3 web searches" in message
