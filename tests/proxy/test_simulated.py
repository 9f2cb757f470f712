"""The simulated provider: pure functions, so direct calls and properties."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.core.usage import from_anthropic, from_openai
from spendgate.errors import InvalidRequest
from spendgate.proxy import simulated
from spendgate.settings import load_settings


def chat(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "demo-small", "messages": [{"role": "user", "content": text}], **extra}


def anthropic(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "demo-large", "max_tokens": 1024,
            "messages": [{"role": "user", "content": text}], **extra}  # fmt: skip


def events(raw: list[bytes]) -> list[Any]:
    """The JSON payloads of SSE events, ``[DONE]`` left out."""
    out = []
    for event in raw:
        data = event.split(b"data: ", 1)[1].strip()
        if data != b"[DONE]":
            out.append(orjson.loads(data))
    return out


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    """Four characters a token, rounded up; nothing for nothing."""
    assert simulated.estimate_tokens(text) == tokens


def test_same_request_same_answer() -> None:
    """Determinism: identical bodies give byte-identical answers and streams."""
    assert simulated.openai_response("/chat/completions", chat()) == simulated.openai_response(
        "/chat/completions", chat()
    )
    assert simulated.anthropic_stream(anthropic()) == simulated.anthropic_stream(anthropic())
    other = simulated.openai_response("/chat/completions", chat("Something else entirely"))
    assert other[1]["id"] != simulated.openai_response("/chat/completions", chat())[1]["id"]


def test_prompt_tokens_count_every_text_part() -> None:
    """String and list-of-parts contents are all counted, system message included."""
    body = {"model": "m", "messages": [
        {"role": "system", "content": "abcdefgh"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "ab"}],
        },
    ]}  # fmt: skip
    status, answer = simulated.openai_response("/chat/completions", body)
    assert status == 200
    assert answer["usage"]["prompt_tokens"] == 2 + 1 + 1


def test_knobs_report_cached_and_reasoning_tokens() -> None:
    """``[[cached:N]]`` and ``[[reasoning:N]]`` show up in the usage details."""
    _, answer = simulated.openai_response(
        "/chat/completions", chat("x" * 40 + "[[cached:6]][[reasoning:7]]")
    )
    usage = answer["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 6
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 7
    visible = len(answer["choices"][0]["message"]["content"].split(" "))
    assert usage["completion_tokens"] == visible + 7


def test_cached_tokens_capped_at_prompt() -> None:
    """A cache read can never exceed the prompt."""
    _, answer = simulated.openai_response("/chat/completions", chat("[[cached:999]]"))
    assert (
        answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        == answer["usage"]["prompt_tokens"]
    )


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_caps_output(field: str) -> None:
    """A cap below the natural length truncates and says ``length``."""
    _, answer = simulated.openai_response("/chat/completions", chat(**{field: 3}))
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"
    words = answer["choices"][0]["message"]["content"].split(" ")
    assert words[:2] == ["Simulated", "reply:"] and len(words) == 3


def test_natural_length_is_16_to_48() -> None:
    """Without a cap the reply is between 16 and 48 tokens and ends with ``stop``."""
    for n in range(30):
        _, answer = simulated.openai_response("/completions", {"model": "m", "prompt": f"p{n}"})
        assert 16 <= answer["usage"]["completion_tokens"] <= 48
        assert answer["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"model": "m"}, "messages"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/completions", {"model": "m"}, "prompt"),
        ("/embeddings", {"model": "m"}, "input"),
        ("/responses", {"model": "m"}, "input"),
    ],
)
def test_openai_bad_input_is_400(path: str, body: dict[str, Any], param: str) -> None:
    """Missing required fields answer 400 in OpenAI's error shape, naming the field."""
    status, answer = simulated.openai_response(path, body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param


def test_openai_stream_bad_input_raises() -> None:
    """The stream builder cannot return a status, so it raises ``InvalidRequest``."""
    with pytest.raises(InvalidRequest):
        simulated.openai_stream("/chat/completions", {"model": "m", "stream": True})


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "max_tokens": 5},
    ],
)
def test_anthropic_bad_input_is_400(body: dict[str, Any]) -> None:
    """Missing ``max_tokens`` or ``messages`` answers Anthropic's error shape."""
    status, answer = simulated.anthropic_response(body)
    assert status == 400
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"


def test_include_usage_semantics() -> None:
    """With ``include_usage`` every chunk has ``usage: null`` and one extra chunk carries it."""
    plain = events(simulated.openai_stream("/chat/completions", chat(stream=True)))
    assert all("usage" not in chunk for chunk in plain)
    body = chat(stream=True, stream_options={"include_usage": True})
    raw = simulated.openai_stream("/chat/completions", body)
    assert raw[-1] == b"data: [DONE]\n\n"
    chunks = events(raw)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    _, whole = simulated.openai_response("/chat/completions", chat())
    assert chunks[-1]["usage"] == whole["usage"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == whole["choices"][0]["message"]["content"]


def test_anthropic_input_excludes_cache() -> None:
    """Anthropic's ``input_tokens`` leaves out cache reads and writes; the total is kept."""
    body = anthropic("y" * 80 + "[[cached:5]][[cache_write:3]]")
    _, answer = simulated.anthropic_response(body)
    usage = answer["usage"]
    assert usage["cache_read_input_tokens"] == 5
    assert usage["cache_creation_input_tokens"] == 3
    total = sum(simulated.estimate_tokens(m["content"]) for m in body["messages"])
    assert usage["input_tokens"] == total - 8
    normalised = from_anthropic(usage)
    assert normalised is not None and normalised.input_tokens == total


@pytest.mark.parametrize(
    ("knob", "one_hour"), [("[[cache_write_1h:2]]", 2), ("[[cache_write_1h:9]]", 3), ("", 0)]
)
def test_anthropic_reports_the_cache_write_split(knob: str, one_hour: int) -> None:
    """``[[cache_write_1h:N]]``: N of the writes (at most all of them) went to the 1-hour
    cache; ``usage.cache_creation`` splits the writes as Anthropic's does."""
    _, answer = simulated.anthropic_response(anthropic("y" * 80 + "[[cache_write:3]]" + knob))
    usage = answer["usage"]
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 3 - one_hour,
        "ephemeral_1h_input_tokens": one_hour,
    }
    normalised = from_anthropic(usage)
    assert normalised is not None
    assert (normalised.cache_write_tokens, normalised.cache_write_1h_tokens) == (3, one_hour)


def test_anthropic_stream_totals_match_response() -> None:
    """message_start carries input usage, message_delta the final output tokens."""
    _, whole = simulated.anthropic_response(
        anthropic(system=[{"type": "text", "text": "Be brief"}])
    )
    chunks = events(
        simulated.anthropic_stream(anthropic(system=[{"type": "text", "text": "Be brief"}]))
    )
    assert [c["type"] for c in chunks[:3]] == ["message_start", "content_block_start", "ping"]
    assert chunks[0]["message"]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    assert chunks[-2]["usage"] == {"output_tokens": whole["usage"]["output_tokens"]}
    text = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    assert text == whole["content"][0]["text"]


def test_responses_usage_shape() -> None:
    """The Responses API reports input/output tokens with their details."""
    _, answer = simulated.openai_response(
        "/responses",
        {"model": "m", "input": "abcd" * 10 + "[[cached:2]]", "instructions": "be nice"},
    )
    usage = from_openai(answer["usage"])
    assert usage is not None
    assert usage.input_tokens == simulated.estimate_tokens("be nice") + 13
    assert usage.cache_read_tokens == 2
    assert answer["output"][0]["content"][0]["type"] == "output_text"


def test_embeddings_dimensions_and_base64() -> None:
    """Vectors have 8 dims by default or ``dimensions``; base64 decodes to the same floats."""
    body = {"model": "e", "input": ["one", "two"]}
    _, floats = simulated.openai_response("/embeddings", body)
    assert [len(d["embedding"]) for d in floats["data"]] == [8, 8]
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    _, packed = simulated.openai_response(
        "/embeddings", {**body, "encoding_format": "base64", "dimensions": 8}
    )
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    _, wide = simulated.openai_response("/embeddings", {**body, "dimensions": 64})
    assert len(wide["data"][1]["embedding"]) == 64
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_models_list() -> None:
    """Any model names are listed in OpenAI's shape."""
    listed = simulated.models_list(["a", "b"])
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["a", "b"]


@given(text=st.text(max_size=300), cap=st.none() | st.integers(0, 60), reasoning=st.integers(0, 30))
def test_completion_tokens_are_pieces_plus_reasoning(
    text: str, cap: int | None, reasoning: int
) -> None:
    """Completion tokens = streamed pieces + reasoning, never above the cap."""
    body = chat(text + f"[[reasoning:{reasoning}]]", stream=True)
    if cap is not None:
        body["max_tokens"] = cap
    reply = simulated.openai_reply("/chat/completions", body)
    assert reply.completion_tokens == len(reply.pieces) + reply.reasoning_tokens
    assert cap is None or reply.completion_tokens <= cap
    deltas = [c for c in events(simulated.openai_stream("/chat/completions", body)) if c["choices"]]
    assert len(deltas) == len(reply.pieces) + 2  # role chunk + pieces + finish chunk


def test_a_configured_simulated_provider_needs_no_base_url(tmp_path: Path) -> None:
    """`kind = "simulated"` in the config file (as the README shows) needs no `base_url`:
    nothing is dialled. Its models are priced by the `price` they name, like any model."""
    config = tmp_path / "spendgate.toml"
    config.write_text(
        '[providers.sim]\nkind = "simulated"\n\n'
        '[models."sim-small"]\nprovider = "sim"\nprice = { model = "gpt-4o-mini" }\n\n'
        '[models."sim-free"]\nprovider = "sim"\n'
        'price = { input_per_mtok = "0", output_per_mtok = "0" }\n'
    )
    settings = load_settings(config_path=str(config), env={})
    small, free = settings.models["sim-small"], settings.models["sim-free"]
    assert small.provider.kind == "simulated"
    assert (small.price.model, small.price.provider) == ("gpt-4o-mini", "openai")
    assert free.price.override is not None and free.price.override.output_per_mtok == 0


def test_a_token_count_is_the_prompt_tokens_of_the_answer() -> None:
    """A count answers what the same request's answer reports as its prompt, a media
    part's ``MEDIA_TOKENS`` included; a Responses count may leave ``input`` out (as with
    ``previous_response_id``), a Messages count needs no ``max_tokens``."""
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    message = anthropic(**{"messages": [{"role": "user", "content": [image, "Describe it"]}]})
    status, counted = simulated.anthropic_count(
        {k: v for k, v in message.items() if k != "max_tokens"}
    )
    _, answer = simulated.anthropic_response(message)
    assert status == 200 and counted == {"input_tokens": answer["usage"]["input_tokens"]}
    assert counted["input_tokens"] > simulated.MEDIA_TOKENS
    picture = {"type": "input_image", "image_url": "https://example.com/a.png"}
    body = {"model": "demo-small", "instructions": "Be brief.",
            "input": [{"role": "user", "content": [picture]}]}  # fmt: skip
    status, count = simulated.openai_response("/responses/input_tokens", body)
    _, response = simulated.openai_response("/responses", body)
    assert status == 200 and count["object"] == "response.input_tokens"
    assert count["input_tokens"] == response["usage"]["input_tokens"]
    assert count["input_tokens"] > simulated.MEDIA_TOKENS
    alone = simulated.openai_response(
        "/responses/input_tokens", {"model": "demo-small", "instructions": "Be brief."}
    )
    assert alone == (200, {"object": "response.input_tokens", "input_tokens": 3})
    assert simulated.anthropic_count({"model": "demo-large"})[0] == 400
