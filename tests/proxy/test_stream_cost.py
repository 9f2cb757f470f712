"""A streamed call tells its cost in-band: an SSE comment ``: x-spendgate-cost-usd …``
after the provider's final usage and before the stream's terminal event, the figure the
ledger holds for that request id (SPEC §1: every proxied response carries its cost)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx
import openai
import orjson
import pytest

from spendgate.app import Gateway
from spendgate.core.money import NANOS_PER_USD
from spendgate.proxy import simulated
from spendgate.proxy.metering import StreamMeter
from spendgate.proxy.wire import cost_figure
from spendgate.testing.fake_upstream import (
    FakeUpstream,
    ServerHandle,
    StreamErrorForm,
    failing_stream,
    route,
    stream_events,
)
from tests.conftest import RunningGateway, start_gateway

HI = [{"role": "user", "content": "hi there"}]
#: the cost comment: its figure, then what it says when the row is not plainly ``ok``
COST = re.compile(rb": x-spendgate-cost-usd ([^\n]*)\n\n")
#: each streamed kind as the meter sees it: its simulated path (None: Anthropic's) and body
STREAM_KINDS = [
    ("chat", "/chat/completions", {"model": "m", "messages": HI}),
    ("message", None, {"model": "m", "max_tokens": 20, "messages": HI}),
    ("response", "/responses", {"model": "m", "input": "hi"}),
]


def told(raw: bytes) -> tuple[bytes, list[str]]:
    """The stream as it would be without its cost comments, and what each said."""
    return COST.sub(b"", raw), [m.group(1).decode() for m in COST.finditer(raw)]


def nanos(figure: str) -> int:
    """A comment's USD figure as exact nanos (never rounded: it must be whole nanos)."""
    assert re.fullmatch(r"[0-9]+\.[0-9]{2,9}", figure), figure
    value = Decimal(figure) * NANOS_PER_USD
    assert value == value.to_integral_value(), figure
    return int(value)


def row_of(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    [row] = [r for r in gateway.ledger() if r["request_id"] == request_id]
    return row


def stream_raw(
    gateway: RunningGateway, key: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    """A streamed call read whole by a plain HTTP client (no SSE parser in the way)."""
    response = httpx.post(
        gateway.url + path,
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


class Recorded:
    """The gateway as uvicorn serves it, keeping the bytes of each proxied response by
    its ``x-request-id``: what an SDK's client received before it parsed them (each
    kept before it is sent: a client may stop reading at ``[DONE]``)."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.sent: dict[str, list[bytes]] = {}

    def body(self, request_id: str) -> bytes:
        return b"".join(self.sent[request_id])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                found = dict(message["headers"]).get(b"x-request-id")
                if found:
                    self.sent[found.decode()] = parts
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, watch)


@pytest.fixture
def recorded(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> Iterator[tuple[RunningGateway, Recorded]]:
    holder: list[Recorded] = []

    def wrap(app: Gateway) -> Recorded:
        holder.append(Recorded(app))
        return holder[0]

    running = start_gateway(database_url, upstream[1].url, tmp_path, wrap=wrap)
    yield running, holder[0]
    running.admin.close()
    running.handle.stop()


def assert_cost_told(
    gateway: RunningGateway, raw: bytes, request_id: str, terminal: bytes | None
) -> None:
    """``raw`` carries one cost comment, the ledger's exact figure for ``request_id``,
    right before ``terminal`` (``None``: as the stream's last bytes)."""
    _, said = told(raw)
    row = row_of(gateway, request_id)
    assert row["status"] == "ok" and not row["usage_estimated"]
    assert len(said) == 1 and nanos(said[0]) == row["cost_nanos"] > 0, (said, row)
    comment = COST.search(raw)
    assert comment is not None
    if terminal is None:
        assert comment.end() == len(raw)
    else:
        assert raw[comment.end() :].startswith(terminal), raw[comment.start() :]


def test_the_sdks_stream_as_before_and_the_stream_tells_its_cost(
    recorded: tuple[RunningGateway, Recorded], fake: FakeUpstream
) -> None:
    """Through the real ``openai`` and ``anthropic`` SDKs, every streaming route still
    gives the same text and usage; the bytes they were sent carry the cost comment with
    the ledger's exact figure, before ``[DONE]`` / ``message_stop`` (after
    ``response.completed``, which carries the usage)."""
    gateway, seen = recorded
    key = gateway.create_key()["key"]
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)

    chat = oai.chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(chat)
    reply = simulated.openai_reply("/chat/completions", fake.requests[-1].json)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.text
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    request_id = chat.response.headers["x-request-id"]
    row = row_of(gateway, request_id)
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        row["input_tokens"],
        row["output_tokens"],
    )
    assert_cost_told(gateway, seen.body(request_id), request_id, b"data: [DONE]\n\n")

    completion = oai.completions.create(model="gpt-4o-mini", prompt="say hi", stream=True)
    pieces = list(completion)
    reply = simulated.openai_reply("/completions", fake.requests[-1].json)
    assert "".join(p.choices[0].text for p in pieces) == reply.text
    assert all(p.choices and p.usage is None for p in pieces)  # the usage chunk stripped
    request_id = completion.response.headers["x-request-id"]
    assert_cost_told(gateway, seen.body(request_id), request_id, b"data: [DONE]\n\n")

    events = oai.responses.create(model="gpt-4o", input="tell me", stream=True)
    kinds = [e.type for e in events]
    reply = simulated.openai_reply("/responses", fake.requests[-1].json)
    assert kinds[-1] == "response.completed"
    request_id = events.response.headers["x-request-id"]
    row = row_of(gateway, request_id)
    assert row["output_tokens"] == reply.completion_tokens
    assert_cost_told(gateway, seen.body(request_id), request_id, None)

    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=HI) as s:
        message = s.get_final_message()
        request_id = s.response.headers["x-request-id"]
    reply = simulated.anthropic_reply(fake.requests[-1].json)
    assert message.content[0].text == reply.text  # type: ignore[union-attr]
    row = row_of(gateway, request_id)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        row["input_tokens"],
        row["output_tokens"],
    )
    terminal = b"event: message_stop\n"
    assert_cost_told(gateway, seen.body(request_id), request_id, terminal)


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_raw_client_reads_the_ledger_figure_and_nothing_else_changed(
    gateway: RunningGateway, fake: FakeUpstream, include_usage: bool
) -> None:
    """Read with plain HTTP, the stream is the provider's events byte for byte (the usage
    chunk spendgate asked for dropped unless the client asked for it too) plus one
    comment, right before ``data: [DONE]``, whose figure is the ledger row's cost."""
    key = gateway.create_key()["key"]
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HI}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = stream_raw(gateway, key, "/v1/chat/completions", body)
    upstream = simulated.openai_stream("/chat/completions", fake.requests[-1].json)
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    usage_chunk = upstream[-2]
    assert b'"choices":[]' in usage_chunk and b'"usage":{' in usage_chunk
    expected = upstream if include_usage else [*upstream[:-2], upstream[-1]]
    rest, _ = told(response.content)
    assert rest == b"".join(expected)
    request_id = response.headers["x-request-id"]
    assert_cost_told(gateway, response.content, request_id, b"data: [DONE]\n\n")


def test_an_anthropic_raw_stream_tells_its_cost_before_message_stop(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The Messages stream: the provider's events unchanged, the comment after
    ``message_delta`` (the final usage) and before ``message_stop``."""
    key = gateway.create_key()["key"]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": HI}
    response = stream_raw(gateway, key, "/v1/messages", body)
    upstream = simulated.anthropic_stream(fake.requests[-1].json)
    rest, _ = told(response.content)
    assert rest == b"".join(upstream)
    assert upstream[-2].startswith(b"event: message_delta\n")
    request_id = response.headers["x-request-id"]
    assert_cost_told(gateway, response.content, request_id, upstream[-1])


@pytest.mark.parametrize(
    ("path", "body", "drop_after", "error"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, 4, b'data: {"error"'),
        (
            "/v1/messages",
            {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": HI},
            4,
            b"event: error\n",
        ),
    ],
)
def test_a_broken_stream_tells_what_was_billed_before_its_error(
    gateway: RunningGateway,
    fake: FakeUpstream,
    path: str,
    body: dict[str, Any],
    drop_after: int,
    error: bytes,
) -> None:
    """The provider's stream breaks before its usage: the call is booked ``incomplete``
    on an estimate, and the client, still there, is told so (figure, status, estimate)
    in the comment, just before the stream's error event."""
    key = gateway.create_key()["key"]
    fake.drop_stream_after = drop_after
    response = stream_raw(gateway, key, path, body)
    row = row_of(gateway, response.headers["x-request-id"])
    assert row["status"] == "incomplete" and row["usage_estimated"] is True
    _, said = told(response.content)
    assert len(said) == 1, response.content
    figure, status, estimated = said[0].split(" ")
    assert (status, estimated) == ("status=incomplete", "usage=estimated")
    assert nanos(figure) == row["cost_nanos"] > 0
    comment = COST.search(response.content)
    assert comment is not None
    assert response.content[comment.end() :].startswith(error)


def test_an_unknown_price_is_told_as_unknown(gateway: RunningGateway) -> None:
    """A model without a known price: the comment says ``unknown``, as the header of a
    non-streamed call does, never $0."""
    key = gateway.create_key()["key"]
    response = stream_raw(
        gateway, key, "/v1/chat/completions", {"model": "mystery-model", "messages": HI}
    )
    _, said = told(response.content)
    assert said == ["unknown"]
    row = row_of(gateway, response.headers["x-request-id"])
    assert row["cost_nanos"] is None and row["price_unknown"] is True


def metered(
    kind: str, raw: bytes, piece: int | None, *, strip_usage_chunk: bool
) -> tuple[StreamMeter, bytes, int | None]:
    """``raw`` fed to a meter in pieces of ``piece`` bytes (None: whole): the meter, what
    it forwarded, and where in that its cost is told (None: the stream never ended)."""
    meter = StreamMeter(kind, strip_usage_chunk=strip_usage_chunk)
    out, at, size = b"", None, piece or len(raw)
    for start in range(0, len(raw), size):
        forwarded = meter.feed(raw[start : start + size])
        if (meter.done or meter.failed) and at is None:
            at = len(out) + meter.cost_at
        out += forwarded
    return meter, out, at


@pytest.mark.parametrize("piece", [None, 1, 7, 100])
@pytest.mark.parametrize(("kind", "path", "body"), STREAM_KINDS)
def test_the_meter_places_the_cost_however_the_stream_is_split(
    kind: str, path: str | None, body: dict[str, Any], piece: int | None
) -> None:
    """Whether the provider's bytes come whole or in pieces of any size, ``cost_at``
    points where the comment belongs in what the meter forwards from the read that
    ended the stream: before ``[DONE]`` (after the usage chunk, dropped here) or
    ``message_stop``; after ``response.completed``, at the end."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = (
        simulated.anthropic_stream(body) if path is None else simulated.openai_stream(path, body)
    )
    raw = b"".join(events)
    meter, out, at = metered(kind, raw, piece, strip_usage_chunk=True)
    assert meter.done and meter.final and at is not None
    if kind == "response":
        assert at == len(out) and out == raw
    else:
        assert out[at:] == events[-1]
        assert out[:at] == b"".join(events[:-2] if kind == "chat" else events[:-1])


@pytest.mark.parametrize(("kind", "path", "body"), STREAM_KINDS)
def test_a_crlf_stream_cut_anywhere_is_metered_as_the_same_stream_in_lf(
    kind: str, path: str | None, body: dict[str, Any]
) -> None:
    """An upstream that ends its lines with ``\\r\\n`` (SSE allows it; sse-starlette's
    default), read in two pieces cut at any byte, between a ``\\r`` and its ``\\n`` too:
    the meter forwards what it forwards for the same stream with ``\\n``, finds the final
    usage and the end, and places the cost there (a cut inside a ``\\r\\n`` used to merge
    two events into one: the usage chunk went unseen, billed as an estimate and sent to a
    client that had not asked for it, or ``[DONE]`` went unseen)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = (
        simulated.anthropic_stream(body) if path is None else simulated.openai_stream(path, body)
    )
    lf = StreamMeter(kind, strip_usage_chunk=True)
    expected = lf.feed(b"".join(events))
    assert lf.done and lf.final
    raw = b"".join(events).replace(b"\n", b"\r\n")
    for cut in range(1, len(raw)):
        meter = StreamMeter(kind, strip_usage_chunk=True)
        first = meter.feed(raw[:cut])
        at = len(first) + meter.cost_at if meter.done else None
        out = first + meter.feed(raw[cut:])
        if at is None:
            at = len(first) + meter.cost_at
        assert (meter.done, meter.final, meter.usage) == (True, True, lf.usage), cut
        assert (out, at) == (expected, lf.cost_at), cut


def call_ended_by_error(url: str, key: str, api: str) -> tuple[str, bytes]:
    """A streamed call, through the SDK its client would use, whose provider ends it
    with its error event: its request id, and how that event starts."""
    claude = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    oai = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    if api == "anthropic":
        with (
            pytest.raises(anthropic.APIStatusError, match="Overloaded"),
            claude.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=HI) as s,
        ):
            request_id = s.response.headers["x-request-id"]
            s.get_final_message()
        return request_id, b"event: error\ndata: "
    if api == "responses":  # the SDK hands the Responses ``error`` event over, unraised
        events = oai.responses.create(model="gpt-4o", input="hi", stream=True)
        assert [e.type for e in events][-1] == "error"
        return events.response.headers["x-request-id"], b"event: error\ndata: "
    chat = oai.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    request_id = chat.response.headers["x-request-id"]
    if api == "vllm":  # the SDK hands it over as a chunk, then stops at [DONE]
        assert list(chat)[-1].object == "error"  # type: ignore[comparison-overlap]
        return request_id, b'data: {"object":"error",'
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(chat)
    return request_id, b'data: {"error":'


@pytest.mark.parametrize("api", ["anthropic", "chat", "responses", "vllm"])
def test_a_providers_error_event_is_booked_and_told_before_it(
    recorded: tuple[RunningGateway, Recorded], fake: FakeUpstream, api: str
) -> None:
    """The provider ends its stream with its own error event (Anthropic's ``event:
    error``, OpenAI's ``data: {"error": …}``, the Responses API's ``event: error``, the
    ``data: {"object": "error", …}`` of older vLLM, which still sends ``[DONE]`` after
    it) before its usage: the SDKs raise on most and hang up. The call is booked
    ``incomplete`` on an estimate before the event goes out, and the comment that says
    so comes right before it (it came after, at the end of the upstream's stream: the
    SDK, gone, never had it, and the row said ``client_cancelled``; vLLM's error was
    not seen at all, the call booked ``ok``). Booked once; no error event of
    spendgate's own is added."""
    gateway, seen = recorded
    key = gateway.create_key()["key"]
    fake.stream_error_after = 4
    fake.stream_error_form = "vllm" if api == "vllm" else "own"
    request_id, error = call_ended_by_error(gateway.url, key, api)
    row = row_of(gateway, request_id)  # exactly one row
    assert (row["status"], row["usage_estimated"]) == ("incomplete", True)
    raw = seen.body(request_id)
    _, said = told(raw)
    assert said == [f"{cost_figure(row['cost_nanos'])} status=incomplete usage=estimated"]
    comment = COST.search(raw)
    assert comment is not None
    rest = raw[comment.end() :]
    assert rest.startswith(error) and rest.count(b"\n\n") == (2 if api == "vllm" else 1), rest
    if api == "vllm":  # its [DONE] still follows
        assert rest.endswith(b"\n\ndata: [DONE]\n\n")


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_stream_the_provider_failed_after_its_usage_is_billed_that_usage_as_incomplete(
    recorded: tuple[RunningGateway, Recorded], fake: FakeUpstream, api: str
) -> None:
    """The provider gave its usage, then said the call failed: Anthropic's ``event:
    error`` after ``message_delta`` (instead of ``message_stop``), or the Responses
    API's ``response.failed``, which carries the usage it bills. The call is booked
    ``incomplete`` (it was booked ``ok``, as if the client had its answer) at the
    provider's usage, not an estimate, and the comment says so: before Anthropic's
    error, which the SDK raises on; after ``response.failed``, as after
    ``response.completed``."""
    gateway, seen = recorded
    key = gateway.create_key()["key"]
    fake.stream_error_after = -1  # in place of message_stop, response.completed
    if api == "anthropic":
        request_id, _ = call_ended_by_error(gateway.url, key, "anthropic")
        reply = simulated.anthropic_reply(fake.requests[-1].json)
    else:
        fake.stream_error_form = "failed"
        oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        events = oai.responses.create(model="gpt-4o", input="tell me", stream=True)
        request_id = events.response.headers["x-request-id"]
        *_, last = events
        assert last.type == "response.failed" and last.response.usage is not None
        reply = simulated.openai_reply("/responses", fake.requests[-1].json)
    row = row_of(gateway, request_id)
    assert (row["status"], row["usage_estimated"]) == ("incomplete", False)
    assert (row["input_tokens"], row["output_tokens"]) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    raw = seen.body(request_id)
    _, said = told(raw)
    assert said == [f"{cost_figure(row['cost_nanos'])} status=incomplete"]
    assert nanos(said[0].split(" ")[0]) == row["cost_nanos"] > 0
    comment = COST.search(raw)
    assert comment is not None
    if api == "anthropic":
        assert raw[: comment.start()].split(b"\n\n")[-2].startswith(b"event: message_delta")
        assert raw[comment.end() :].startswith(b"event: error\n")
    else:
        assert comment.end() == len(raw)
        assert raw[: comment.start()].split(b"\n\n")[-2].startswith(b"event: response.failed")


def _without_usage(event: bytes) -> bytes:
    """A ``response.failed`` event whose response reports no usage."""
    head, data = event.split(b"data: ", 1)
    payload = orjson.loads(data)
    payload["response"]["usage"] = None
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


CHAT_BODY = {"model": "m", "messages": HI, "stream_options": {"include_usage": True}}
MESSAGES_BODY = {"model": "m", "max_tokens": 20, "messages": HI}
RESPONSES_BODY = {"model": "m", "input": "hi"}
#: (kind, path, body, where the provider cut its stream (None: it did not), how it ended it,
#: the ledger status, whether the usage billed is an estimate, how many events (the
#: last ones) follow the cost comment)
ENDINGS = [
    pytest.param("chat", "/v1/chat/completions", CHAT_BODY, None, "own", "ok", False, 1,
                 id="chat-done"),
    pytest.param("chat", "/v1/chat/completions", CHAT_BODY, 4, "own", "incomplete", True, 1,
                 id="chat-error"),
    pytest.param("chat", "/v1/chat/completions", CHAT_BODY, 4, "vllm", "incomplete", True, 2,
                 id="chat-vllm-error-then-done"),
    pytest.param("message", "/v1/messages", MESSAGES_BODY, None, "own", "ok", False, 1,
                 id="message-stop"),
    pytest.param("message", "/v1/messages", MESSAGES_BODY, 4, "own", "incomplete", True, 1,
                 id="message-error-before-its-usage"),
    pytest.param("message", "/v1/messages", MESSAGES_BODY, -1, "own", "incomplete", False, 1,
                 id="message-error-after-message-delta"),
    pytest.param("response", "/v1/responses", RESPONSES_BODY, None, "own", "ok", False, 0,
                 id="response-completed"),
    pytest.param("response", "/v1/responses", {**RESPONSES_BODY, "max_output_tokens": 3},
                 None, "own", "ok", False, 0, id="response-incomplete-at-its-cap"),
    pytest.param("response", "/v1/responses", RESPONSES_BODY, -1, "failed", "incomplete",
                 False, 0, id="response-failed"),
    pytest.param("response", "/v1/responses", RESPONSES_BODY, -1, "failed-no-usage",
                 "incomplete", True, 0, id="response-failed-without-usage"),
    pytest.param("response", "/v1/responses", RESPONSES_BODY, 4, "own", "incomplete", True, 1,
                 id="response-error-event"),
]  # fmt: skip


@pytest.mark.parametrize("piece", [None, 7])
@pytest.mark.parametrize(
    ("kind", "path", "body", "after", "form", "status", "estimated", "following"), ENDINGS
)
def test_each_way_a_stream_ends_has_its_status_bill_and_cost_place(
    kind: str,
    path: str,
    body: dict[str, Any],
    after: int | None,
    form: str,
    status: str,
    estimated: bool,
    following: int,
    piece: int | None,
) -> None:
    """How the provider ends a stream decides its ledger status: its normal end
    (``[DONE]``, ``message_stop``, ``response.completed``, and ``response.incomplete``:
    the output cap reached, a normal end as a chat's ``finish_reason: length`` is) is
    ``ok``; its error, or ``response.failed``, is ``incomplete``, billed its usage when
    it gave its final figure first, else an estimate. The end is found whatever the
    provider's bytes are cut into, and the cost goes before the event that ends the
    stream (after the Responses event that carries the response)."""
    where = route("POST", path)
    assert where is not None
    body = {**body, "stream": True}
    whole = StreamMeter(kind, strip_usage_chunk=False)
    whole.feed(b"".join(stream_events(where, body)))
    if after is None:
        events = stream_events(where, body)
    else:
        events = failing_stream(
            where, body, after, cast(StreamErrorForm, form.removesuffix("-no-usage"))
        )
        if form == "failed-no-usage":
            events[-1] = _without_usage(events[-1])
    raw = b"".join(events)
    meter, out, at = metered(kind, raw, piece, strip_usage_chunk=False)
    assert out == raw and at is not None
    assert out[at:] == b"".join(events[len(events) - following :])
    usage, guessed = meter.billed(len(orjson.dumps(body)) // 4)
    assert (meter.status, guessed) == (status, estimated)
    if not estimated:
        assert usage == whole.usage


@pytest.mark.parametrize(("kind", "path", "body"), STREAM_KINDS)
@pytest.mark.parametrize("ending", [b"", b"\n"])
def test_a_last_event_without_its_blank_line_is_still_metered(
    kind: str, path: str | None, body: dict[str, Any], ending: bytes
) -> None:
    """An upstream that closes right after its last event, without the blank line that
    ends it: the event is still read (the final usage, the end), so the call is billed
    from the provider's figure, not estimated; a usage chunk the client did not ask for
    is still dropped (it used to be forwarded unread: billed as an estimate)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = (
        simulated.anthropic_stream(body) if path is None else simulated.openai_stream(path, body)
    )
    whole = StreamMeter(kind, strip_usage_chunk=True)
    whole.feed(b"".join(events))
    if kind == "chat":  # the usage chunk last, no [DONE] after it: forwarded without it
        events = events[:-1]
        expected = b"".join(events[:-1])
    cut = b"".join(events).removesuffix(b"\n\n") + ending
    meter = StreamMeter(kind, strip_usage_chunk=True)
    out = meter.feed(cut) + meter.finish()
    assert meter.final and meter.usage == whole.usage
    if kind == "chat":
        assert out == expected
    else:
        assert meter.done and out == cut


def test_a_chat_style_error_ends_a_responses_stream_too() -> None:
    """An OpenAI-compatible gateway in front of the provider (LiteLLM did) may end a
    ``/v1/responses`` stream with the chat-style ``data: {"error": …}``, which the
    ``openai`` SDK raises on: it ends that stream as it ends a chat one, booked
    ``incomplete`` with the cost told before it (it went unseen: the stream ran to its
    close, the cost after the error the SDK had already raised on)."""
    where = route("POST", "/v1/responses")
    assert where is not None
    body = {**RESPONSES_BODY, "stream": True}
    error = b"data: " + orjson.dumps(simulated.openai_error("Overloaded")) + b"\n\n"
    events = [*stream_events(where, body)[:4], error]
    meter, out, at = metered("response", b"".join(events), None, strip_usage_chunk=False)
    assert meter.failed and at is not None and out[at:] == error
    assert (meter.status, meter.billed(100)[1]) == ("incomplete", True)
