"""The fake upstream, driven by the official ``openai`` and ``anthropic`` SDKs over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.proxy import simulated
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, route, serve_in_thread

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about budgets [[cached:2]]"}]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def handle(fake: FakeUpstream) -> Iterator[ServerHandle]:
    running = serve_in_thread(fake)
    yield running
    running.stop()
    assert not running.thread.is_alive()


@pytest.fixture
def oai(handle: ServerHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=handle.url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(handle: ServerHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=handle.url, api_key="x", max_retries=0) as client:
        yield client


def expected(path: str, **body: Any) -> dict[str, Any]:
    status, answer = simulated.openai_response(path, body)
    assert status == 200
    return answer


def test_chat_non_streaming(oai: openai.OpenAI) -> None:
    """The SDK parses a chat.completion; text and usage equal the simulator's."""
    done = oai.chat.completions.create(model="demo-small", messages=MESSAGES, max_tokens=20)
    want = expected("/chat/completions", model="demo-small", messages=MESSAGES, max_tokens=20)
    assert done.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert done.usage is not None
    assert done.usage.model_dump(exclude_none=True) == want["usage"]
    assert done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.parametrize("include_usage", [True, False, None])
def test_chat_streaming_include_usage(oai: openai.OpenAI, include_usage: bool | None) -> None:
    """Usage arrives in one final chunk only when ``include_usage`` is true."""
    extra: dict[str, Any] = {}
    if include_usage is not None:
        extra["stream_options"] = {"include_usage": include_usage}
    chunks = list(
        oai.chat.completions.create(model="demo-small", messages=MESSAGES, stream=True, **extra)
    )
    want = expected("/chat/completions", model="demo-small", messages=MESSAGES)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
        assert with_usage[0].usage is not None
        assert with_usage[0].usage.total_tokens == want["usage"]["total_tokens"]
    else:
        assert with_usage == []


def test_completions_both_ways(oai: openai.OpenAI) -> None:
    """Legacy completions parse streamed and whole, with the same text."""
    whole = oai.completions.create(model="demo-small", prompt="Once upon a time")
    parts = oai.completions.create(
        model="demo-small",
        prompt="Once upon a time",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(parts)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    assert whole.usage is not None and whole.usage.prompt_tokens == 4


def test_embeddings(oai: openai.OpenAI) -> None:
    """The SDK asks for base64 by default and decodes it back to the simulator's floats."""
    got = oai.embeddings.create(model="demo-small", input=["alpha", "beta"], dimensions=12)
    want = expected("/embeddings", model="demo-small", input=["alpha", "beta"], dimensions=12)
    assert len(got.data) == 2
    for mine, theirs in zip(got.data, want["data"], strict=True):
        assert mine.embedding == pytest.approx(theirs["embedding"], abs=1e-6)
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_responses_non_streaming(oai: openai.OpenAI) -> None:
    """A Responses API object parses; ``output_text`` and usage match."""
    got = oai.responses.create(
        model="demo-large", input="Summarise [[reasoning:4]]", max_output_tokens=64
    )
    want = expected(
        "/responses", model="demo-large", input="Summarise [[reasoning:4]]", max_output_tokens=64
    )
    assert got.output_text == want["output"][0]["content"][0]["text"]
    assert got.usage is not None
    assert got.usage.output_tokens_details.reasoning_tokens == 4
    assert got.usage.model_dump(include={"input_tokens", "output_tokens", "total_tokens"}) == {
        k: want["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens")
    }


def test_responses_streaming(oai: openai.OpenAI) -> None:
    """The raw event stream and the SDK's accumulating helper both see the full reply."""
    events = list(oai.responses.create(model="demo-large", input="Hi", stream=True))
    want = expected("/responses", model="demo-large", input="Hi")
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == want["output"][0]["content"][0]["text"]
    with oai.responses.stream(model="demo-large", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == deltas
    assert final.usage is not None and final.usage.total_tokens == want["usage"]["total_tokens"]


def test_models_list(oai: openai.OpenAI) -> None:
    """``models.list`` pages through the simulated models."""
    assert [m.id for m in oai.models.list()] == list(simulated.SIMULATED_MODELS)


def anthropic_body() -> dict[str, Any]:
    prompt = "Why cache? [[cached:3]] [[cache_write:2]]"
    return {"model": "demo-large", "max_tokens": 30, "system": "Be terse",
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip


def test_anthropic_non_streaming(claude: anthropic.Anthropic) -> None:
    """messages.create parses; cache reads and writes are reported apart from input."""
    got = claude.messages.create(**anthropic_body())
    _, want = simulated.anthropic_response(anthropic_body())
    assert got.content[0].type == "text" and got.content[0].text == want["content"][0]["text"]
    assert got.usage.model_dump(exclude_none=True) == want["usage"]
    assert (got.usage.cache_read_input_tokens, got.usage.cache_creation_input_tokens) == (3, 2)


def test_anthropic_streaming(claude: anthropic.Anthropic) -> None:
    """Raw stream events arrive in Anthropic's order; the helper's final message matches."""
    raw = list(claude.messages.create(**anthropic_body(), stream=True))
    assert raw[0].type == "message_start" and raw[-1].type == "message_stop"
    _, want = simulated.anthropic_response(anthropic_body())
    with claude.messages.stream(**anthropic_body()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == want["content"][0]["text"]
    assert final.usage.model_dump(exclude_none=True) == want["usage"]
    assert final.stop_reason == want["stop_reason"]


def test_requests_are_recorded(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    """Method, path, lowercased headers and JSON body are kept for assertions."""
    oai.chat.completions.create(
        model="demo-small", messages=MESSAGES, extra_headers={"X-Trace": "t1"}
    )
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["x-trace"] == "t1"
    assert seen.headers["authorization"] == "Bearer x"
    assert seen.json["messages"] == MESSAGES


def test_azure_deployment_path(handle: ServerHandle, fake: FakeUpstream) -> None:
    """Azure's deployment URL answers, with the model taken from the deployment."""
    client = openai.AzureOpenAI(azure_endpoint=handle.url, api_key="k", api_version="2024-10-21")
    with client:
        got = client.chat.completions.create(model="my-deploy", messages=MESSAGES)
    assert got.model == "my-deploy"
    assert fake.requests[-1].query == "api-version=2024-10-21"
    assert fake.requests[-1].headers["api-key"] == "k"


def test_fail_status_for_a_count(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    """``fail_status`` fails exactly ``fail_count`` requests, in OpenAI's error shape."""
    fake.fail_status, fake.fail_count = 429, 1
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="demo-small", messages=MESSAGES)
    assert (
        isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"
    )
    assert oai.chat.completions.create(model="demo-small", messages=MESSAGES).choices


def test_fail_status_anthropic_shape(claude: anthropic.Anthropic, fake: FakeUpstream) -> None:
    """With no count the failure is permanent and Anthropic-shaped on /v1/messages."""
    fake.fail_status = 529
    for _ in range(2):
        with pytest.raises(anthropic.APIStatusError) as caught:
            claude.messages.create(**anthropic_body())
        assert caught.value.status_code == 529
        message = "Simulated upstream failure (529)."
        assert caught.value.body == {
            "type": "error", "error": {"type": "overloaded_error", "message": message}}  # fmt: skip


@pytest.mark.parametrize("header", ["authorization", "x-api-key", "api-key"])
def test_required_api_key(handle: ServerHandle, fake: FakeUpstream, header: str) -> None:
    """Each accepted header lets the right key through; a wrong key gets 401."""
    fake.required_api_key = "sekrit"
    value = "Bearer sekrit" if header == "authorization" else "sekrit"
    body = {"model": "m", "messages": MESSAGES}
    ok = httpx.post(handle.url + "/v1/chat/completions", json=body, headers={header: value})
    bad = httpx.post(handle.url + "/v1/chat/completions", json=body, headers={header: "nope"})
    assert ok.status_code == 200
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_via_sdks(
    oai: openai.OpenAI, claude: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    """The SDKs map the 401s to their authentication errors."""
    fake.required_api_key = "sekrit"
    with pytest.raises(openai.AuthenticationError):
        oai.models.list()
    with pytest.raises(anthropic.AuthenticationError):
        claude.messages.create(**anthropic_body())


def test_drop_stream_after(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    """A dropped stream breaks off mid-way: no usage, and the client sees the cut."""
    fake.drop_stream_after = 3
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):  # wraps httpx.RemoteProtocolError
        stream = oai.chat.completions.create(
            model="demo-small",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            seen.append(chunk)  # keep what arrived before the cut
    assert len(seen) == 3 and all(chunk.usage is None for chunk in seen)


def test_bad_streaming_request_is_400(oai: openai.OpenAI) -> None:
    """Invalid streaming input is refused with JSON, not a broken stream."""
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="demo-small", messages=[], stream=True)


def test_determinism_over_http(oai: openai.OpenAI) -> None:
    """The same request twice gives the same id, text and usage."""
    first, second = (
        oai.chat.completions.create(model="demo-small", messages=MESSAGES) for _ in range(2)
    )
    assert first.model_dump() == second.model_dump()


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "/v1/responses", "/responses"),
        ("GET", "/v1/models", "/models"),
        ("POST", "/openai/deployments/d1/embeddings", "/embeddings"),
        ("POST", "/openai/deployments/d1/responses", None),
        ("GET", "/v1/chat/completions", None),
    ],
)
def test_route_table(method: str, path: str, endpoint: str | None) -> None:
    """Only the documented paths are routed."""
    found = route(method, path)
    assert (found.endpoint if found else None) == endpoint


def test_keeps_last_1000_requests(fake: FakeUpstream, handle: ServerHandle) -> None:
    """The record is bounded so a benchmark run cannot grow it forever."""
    with httpx.Client(base_url=handle.url) as client:
        for _ in range(1005):
            client.get("/v1/models")
    assert len(fake.requests) == 1000
