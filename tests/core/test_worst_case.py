"""The worst-case rule (``core.worst_case``), one row per request shape (issue 23.1/23.2)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from spendgate.core.usage import TokenUsage
from spendgate.core.worst_case import (
    AUDIO_BYTES_PER_TOKEN,
    IMAGE_ESTIMATE,
    SEARCHES_HELD,
    BadField,
    continues,
    expanding_parts,
    expands,
    image_bound,
    image_estimate,
    marks_cache,
    prompt_bound,
    prompt_estimate,
    searches_bound,
    text_bound,
    worst_case,
)

PROMPT = 100  # the prompt estimate (bytes / 4) of the request
DEFAULT = 4096

CASES: list[tuple[str, str, str, dict[str, Any], int, tuple[str, int] | None]] = [
    # (what, request kind, provider kind, fields, output tokens, cap sent upstream)
    ("chat max_tokens", "chat", "openai", {"max_tokens": 100}, 100, None),
    ("chat max_completion_tokens wins", "chat", "openai",
     {"max_completion_tokens": 300, "max_tokens": 100}, 300, None),
    ("chat both caps: the larger binds", "chat", "openai",
     {"max_completion_tokens": 100, "max_tokens": 5000}, 5000, None),
    ("chat max_completion_tokens to an OpenAI-compatible server: sent as max_tokens",
     "chat", "openai_compatible", {"max_completion_tokens": 100}, 100, ("max_tokens", 100)),
    ("chat max_tokens to an OpenAI-compatible server: untouched", "chat",
     "openai_compatible", {"max_tokens": 100}, 100, None),
    ("chat max_tokens to OpenAI: untouched", "chat", "azure", {"max_tokens": 100}, 100, None),
    ("chat n=8", "chat", "openai", {"n": 8, "max_tokens": 1000}, 8000, None),
    ("chat no cap, OpenAI: the reasoning-safe field is sent", "chat", "openai", {},
     DEFAULT, ("max_completion_tokens", DEFAULT)),
    ("chat no cap, Azure", "chat", "azure", {"n": 2}, 2 * DEFAULT,
     ("max_completion_tokens", DEFAULT)),
    ("chat no cap, OpenAI-compatible server", "chat", "openai_compatible", {}, DEFAULT,
     ("max_tokens", DEFAULT)),
    ("completion best_of beyond n", "completion", "openai",
     {"n": 2, "best_of": 5, "max_tokens": 10}, 50, None),
    ("completion n beyond best_of", "completion", "openai", {"n": 3, "max_tokens": 10}, 30, None),
    ("completion no cap", "completion", "openai", {}, DEFAULT, ("max_tokens", DEFAULT)),
    ("completion batch of prompts: each answered", "completion", "openai",
     {"prompt": ["a", "b", "c"], "best_of": 2, "max_tokens": 10}, 60, None),
    ("completion batch of token lists", "completion", "openai",
     {"prompt": [[1, 2], [3]], "max_tokens": 10}, 20, None),
    ("completion one list of token ids is one prompt", "completion", "openai",
     {"prompt": [1, 2, 3], "max_tokens": 10}, 10, None),
    ("responses max_output_tokens", "response", "openai", {"max_output_tokens": 64}, 64, None),
    ("responses has no n: ignored", "response", "openai", {"n": 8, "max_output_tokens": 64},
     64, None),
    ("responses no cap", "response", "openai", {}, DEFAULT, ("max_output_tokens", DEFAULT)),
    ("responses max_tokens is not its cap", "response", "openai", {"max_tokens": 5}, DEFAULT,
     ("max_output_tokens", DEFAULT)),
    ("anthropic max_tokens (thinking inside it)", "message", "anthropic",
     {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}, 2048, None),
    ("anthropic without max_tokens: the provider refuses it, nothing sent",
     "message", "anthropic", {}, DEFAULT, None),
    ("embeddings: input only", "embedding", "openai", {"max_tokens": 100}, 0, None),
    ("a zero cap is a cap", "chat", "openai", {"max_tokens": 0}, 0, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "provider", "fields", "output", "sent"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_worst_case_table(
    kind: str, provider: str, fields: dict[str, Any], output: int, sent: tuple[str, int] | None
) -> None:
    """Output = the cap per answer × the answers generated; input = the prompt estimate
    (none counted per answer); the cap assumed is the one sent upstream."""
    worst = worst_case({"model": "m", **fields}, kind, PROMPT, DEFAULT, provider)
    assert worst.usage == TokenUsage(input_tokens=PROMPT, output_tokens=output)
    assert worst.send_cap == sent


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": "8"}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"best_of": 21}, "best_of"),
    ],
)
def test_fields_out_of_range_are_named(fields: dict[str, Any], param: str) -> None:
    """A count or cap that is not a whole number in range is refused, naming the field."""
    with pytest.raises(BadField) as caught:
        worst_case({"model": "m", **fields}, "completion", PROMPT, DEFAULT, "openai")
    assert caught.value.param == param


def test_an_absurd_cap_is_bounded_by_the_most_a_call_is_recorded_with() -> None:
    """max_tokens of 2^62 × n=128 reserves MAX_TOKENS_PER_CALL output tokens, not an
    overflowing figure: no call is ever recorded with more."""
    from spendgate.core.usage import MAX_TOKENS_PER_CALL

    worst = worst_case({"n": 128, "max_tokens": 2**62}, "chat", PROMPT, DEFAULT, "openai")
    assert worst.usage.output_tokens == MAX_TOKENS_PER_CALL


def test_a_prompt_marked_for_caching_counts_as_one_hour_cache_writes() -> None:
    """Only the Anthropic Messages API bills cache writes; there the whole prompt may be
    written to the 1-hour cache: a second worst case counts it so, beside the plain one."""
    fields = {"model": "m", "max_tokens": 10}
    marked = worst_case(fields, "message", PROMPT, DEFAULT, "anthropic", cache_writes=True)
    assert marked.usage == TokenUsage(input_tokens=PROMPT, output_tokens=10)
    assert marked.cached is not None
    assert marked.cached.cache_write_tokens == marked.cached.cache_write_1h_tokens == PROMPT
    assert marked.cached.input_tokens == PROMPT and marked.cached.output_tokens == 10
    chat = worst_case(fields, "chat", PROMPT, DEFAULT, "openai", cache_writes=True)
    assert chat.cached == TokenUsage(
        input_tokens=PROMPT, output_tokens=10, cache_write_tokens=PROMPT
    )  # OpenAI caches unasked, and some of its models bill the writes; no 1-hour split
    assert worst_case(fields, "message", PROMPT, DEFAULT, "anthropic").cached is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"system": [{"cache_control": {}}]}', True),
        (b'{"messages": [{"content": [{"cache\\u005fcontrol": {}}]}]}', True),
        (b'{"messages": [{"content": "caf\\u00e9"}]}', False),
        (b'{"messages": [{"content": "plain"}]}', False),
    ],
)
def test_marks_cache_reads_the_parsed_request_when_the_bytes_may_hide_the_key(
    body: bytes, expected: bool
) -> None:
    assert marks_cache(orjson.loads(body), body) is expected


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("plain ascii text.", 17 // 4),
        ("中文", 6),  # two 3-byte characters: at most a token a byte
        ("é", 2),
        ("\\u4e2d", 6 // 4 + 2),  # one escape: three tokens in all
        ("𝄞" + "a" * 8, 4 + 8 // 4),
    ],
)
def test_a_prompt_is_held_at_a_token_per_byte_outside_ascii(text: str, tokens: int) -> None:
    """ASCII runs 4 bytes a token; a byte outside ASCII is never less than a token, and an
    escape spells a character of up to three bytes (its six bytes / 4 would be 1.5)."""
    assert prompt_bound(text.encode()) == tokens


def test_cjk_text_is_held_above_one_token_a_character() -> None:
    """Chinese takes about a token a character (more for rare ones): bytes / 4 held it
    at 0.75, raw or escaped; both are now held at three."""
    text = "预算必须在并发请求下保持" * 50
    for body in (orjson.dumps({"content": text}), json.dumps({"content": text}).encode()):
        assert prompt_bound(body) >= 3 * len(text) > len(body) // 4


@pytest.mark.parametrize(
    ("kind", "field", "given", "ids"),
    [
        ("completion", "prompt", [0] * 1000, 1000),
        ("completion", "prompt", [[0] * 600, [1] * 400], 1000),
        ("embedding", "input", [[7] * 1000], 1000),
    ],
)
def test_token_ids_are_held_a_token_an_id(
    kind: str, field: str, given: list[Any], ids: int
) -> None:
    """A prompt of token ids is a token an id: "0," is two bytes, which bytes / 4 held at
    half a token; the rest of the body still counts at its bytes."""
    body = orjson.dumps({"model": "m", field: given})
    assert len(body) // 4 < ids <= text_bound({field: given}, kind, body) <= ids + 10


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("completion", {"prompt": ["a", "b"]}),
        ("embedding", {"input": "text"}),
        ("chat", {"prompt": [0] * 100}),
    ],
)
def test_text_prompts_keep_their_bytes_bound(kind: str, fields: dict[str, Any]) -> None:
    """Strings, and a chat request's stray ``prompt``, are bounded by their bytes."""
    body = orjson.dumps(fields)
    assert text_bound(fields, kind, body) == prompt_bound(body)


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
EXPANDING: list[tuple[str, str, dict[str, Any]]] = [
    ("chat image by URL", "chat", {"messages": [{"role": "user", "content": [IMAGE]}]}),
    ("chat audio", "chat", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
    ("chat file by id", "chat", {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-1"}}]}]}),
    ("chat search model", "chat", {"web_search_options": {}, "messages": []}),
    ("responses previous_response_id", "response",
     {"previous_response_id": "resp_1", "input": "and then?"}),
    ("responses conversation", "response", {"conversation": "conv_1", "input": "hi"}),
    ("responses stored prompt", "response", {"prompt": {"id": "pmpt_1"}}),
    ("responses image", "response", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}),
    ("responses file", "response", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]}),
    ("responses item reference", "response",
     {"input": [{"type": "item_reference", "id": "msg_1"}]}),
    ("responses tool output with an image", "response", {"input": [
        {"type": "function_call_output", "call_id": "c", "output": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}),
    ("responses file search", "response", {"input": "q", "tools": [
        {"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
    ("responses remote MCP", "response", {"input": "q", "tools": [
        {"type": "mcp", "server_label": "x", "server_url": "https://example.com"}]}),
    ("anthropic image", "message", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}),
    ("anthropic document in the system prompt", "message", {"system": [
        {"type": "document", "source": {"type": "file", "file_id": "f"}}], "messages": []}),
    ("anthropic image in a tool result", "message", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]}]}),
    ("anthropic web fetch", "message", {"messages": [], "tools": [
        {"type": "web_fetch_20250910", "name": "web_fetch"}]}),
    ("anthropic MCP connector", "message", {"messages": [], "mcp_servers": [{"url": "u"}]}),
    ("anthropic code execution container", "message", {"messages": [], "container": "c_1"}),
    ("anthropic code execution tool", "message", {"messages": [], "tools": [
        {"type": "code_execution_20250825", "name": "code_execution"}]}),
    ("anthropic image among a content document's blocks", "message", {"messages": [
        {"role": "user", "content": [{"type": "document", "source": {"type": "content",
            "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}}]}]}),
    ("anthropic document by URL", "message", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}}]}]}),
    ("responses code interpreter", "response", {"input": "q", "tools": [
        {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["f"]}}]}),
    ("responses item reference without its type", "response", {"input": [{"id": "msg_1"}]}),
    ("responses reasoning by id", "response",
     {"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}),
    ("responses computer screenshot", "response", {"input": [
        {"type": "computer_call_output", "call_id": "c", "output": {
            "type": "computer_screenshot", "image_url": "data:image/png;base64,AA"}}]}),
    ("chat an earlier audio answer by id", "chat", {"messages": [
        {"role": "assistant", "audio": {"id": "audio_1"}}]}),
]  # fmt: skip
PLAIN: list[tuple[str, str, dict[str, Any]]] = [
    ("chat text parts", "chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "an image of a file, a document, a prompt"}]}]}),
    ("chat function tool", "chat", {"messages": [], "tools": [
        {"type": "function", "function": {"name": "web_search"}}]}),
    ("responses text", "response", {"input": "previous_response_id", "instructions": "x"}),
    ("responses null previous_response_id", "response",
     {"previous_response_id": None, "input": "hi"}),
    ("metadata names a conversation", "chat",
     {"messages": [], "metadata": {"conversation": "c", "source": "s"}}),
    ("legacy completion prompt", "completion", {"prompt": "an image"}),
    ("embeddings", "embedding", {"input": [{"type": "image_url"}]}),
    ("a type that is not a string", "chat", {"messages": [{"content": [{"type": ["image"]}]}]}),
    ("anthropic document of plain text", "message", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "x", "media_type": "text/plain"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text"}]}}]}]}),
    ("responses reasoning with its encrypted content", "response", {"input": [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"}]}),
    ("responses message items", "response", {"input": [
        {"role": "user", "content": "hi"}, {"type": "message", "id": "m", "role": "user",
                                            "content": [{"type": "input_text", "text": "x"}]}]}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [(kind, fields, True) for _, kind, fields in EXPANDING]
    + [(kind, fields, False) for _, kind, fields in PLAIN],
    ids=[what for what, *_ in EXPANDING] + [what for what, *_ in PLAIN],
)
def test_a_prompt_the_provider_expands_is_told_from_its_parts(
    kind: str, fields: dict[str, Any], expected: bool
) -> None:
    assert expands({"model": "m", **fields}, kind) is expected


def test_an_escaped_type_is_read_from_the_parsed_request() -> None:
    """``\\u`` escapes can spell a part's type so the bytes do not show it."""
    body = b'{"messages": [{"content": [{"type": "image\\u005furl"}]}]}'
    assert b"image_url" not in body
    assert expands(orjson.loads(body), "chat") is True


def test_images_a_model_bills_past_its_window_raise_the_bound() -> None:
    """gpt-4o-mini bills an image up to 48,169 tokens that do not count in its window."""
    assert image_bound("gpt-4o-mini", 6) == 6 * 48_169
    assert image_bound("gpt-4o-mini-2024-07-18", 1) == 48_169
    assert image_bound("gpt-4o", 6) == image_bound("claude-sonnet-4-5", 6) == 0
    request = {"messages": [{"role": "user", "content": [IMAGE, IMAGE, {"type": "text"}]}]}
    assert expanding_parts(request, "chat") == 2


def test_the_hold_counts_an_expanded_prompt_at_the_bound_and_the_estimate_stays() -> None:
    """An expanded prompt is held at the model's bound (cache writes too, when the
    request asks for caching), while the estimate that a timeout is billed at and a
    tokens-per-minute limit counts stays the request's own."""
    worst = worst_case(
        {"max_tokens": 10}, "message", PROMPT, DEFAULT, "anthropic",
        cache_writes=True, input_bound=200_000,
    )  # fmt: skip
    assert worst.usage == TokenUsage(input_tokens=PROMPT, output_tokens=10)
    held, cached = worst.held()
    assert held == TokenUsage(input_tokens=200_000, output_tokens=10)
    assert cached is not None
    assert cached.input_tokens == cached.cache_write_tokens == cached.cache_write_1h_tokens
    assert cached.cache_write_tokens == 200_000
    plain = worst_case({"max_tokens": 10}, "chat", PROMPT, DEFAULT, "openai")
    assert plain.held() == (plain.usage, plain.cached)
    window = worst_case(
        {"max_tokens": 10}, "chat", PROMPT, DEFAULT, "openai", input_bound=9_000, cache_writes=True
    )
    assert window.held()[1] == TokenUsage(
        input_tokens=9_000, output_tokens=10, cache_write_tokens=9_000
    )
    # a model not priced for cache writes bills them as input: no second worst case
    unpriced = worst_case({"max_tokens": 10}, "chat", PROMPT, DEFAULT, "openai", input_bound=9_000)
    assert unpriced.cached is None
    bigger = worst_case({}, "embedding", 300_000, DEFAULT, "openai", input_bound=200_000)
    assert bigger.held()[0].input_tokens == 300_000


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"previous_response_id": "resp_1", "input": "and then?"}, "resp_1"),
        ({"previous_response_id": "resp_1", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "u"}]}]}, None),  # an image too
        ({"previous_response_id": "resp_1", "conversation": "conv_1"}, None),
        ({"previous_response_id": "resp_1", "tools": [{"type": "web_search"}]}, None),
        ({"previous_response_id": "", "input": "hi"}, None),
        ({"previous_response_id": 5, "input": "hi"}, None),
        ({"input": "hi"}, None),
    ],
)  # fmt: skip
def test_continues_names_a_stored_conversation_that_is_the_only_expansion(
    fields: dict[str, Any], expected: str | None
) -> None:
    assert continues({"model": "m", **fields}, "response") == expected
    assert continues({"model": "m", **fields}, "chat") is None


def test_an_images_inline_data_is_estimated_as_an_image_not_as_text() -> None:
    """A base64 photo is ~500 kB of text in the body; the provider bills it as one
    image. Its bytes leave the estimate (the text around it stays), each image counts
    ``IMAGE_ESTIMATE``; a file's inline data stays text (its pages are its text)."""
    photo = "data:image/png;base64," + "A" * 500_000
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": photo}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ]
    }
    anthropic = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "A" * 500_000,
                        },
                    }
                ],
            }
        ]
    }
    responses = {
        "input": [
            {
                "type": "computer_call_output",
                "call_id": "c",
                "output": {"type": "computer_screenshot", "image_url": photo},
            }
        ]
    }
    pdf = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {"file_data": "data:application/pdf;base64," + "A" * 40_000},
                    }
                ],
            }
        ]
    }
    for kind, payload, images, inline in (
        ("chat", chat, 2, len(photo)),
        ("message", anthropic, 1, 500_000),
        ("response", responses, 1, len(photo)),
        ("chat", pdf, 0, 0),
    ):
        size = len(orjson.dumps(payload))
        expected = (size - inline) // 4 + images * IMAGE_ESTIMATE
        assert prompt_estimate(payload, kind, size) == (expected, 0, inline)
        assert expected < size // 4 or not images


def test_audio_is_estimated_by_its_length_and_held_and_answered_as_audio() -> None:
    """An ``input_audio`` part's base64 is a token per ``AUDIO_BYTES_PER_TOKEN``, counted
    as audio; the hold of a prompt that hears audio prices the bound as audio (a model's
    audio input costs several times its text); ``modalities`` with audio make the output
    audio."""
    clip = "U" * 204_800  # ~10 s of MP3: 100 tokens
    payload = {"modalities": ["text", "audio"], "max_tokens": 50, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "answer this"},
                                     {"type": "input_audio", "input_audio": {
                                         "data": clip, "format": "mp3"}}]}]}  # fmt: skip
    size = len(orjson.dumps(payload))
    estimate, audio, inline = prompt_estimate(payload, "chat", size)
    assert inline == len(clip)
    assert audio == len(clip) // AUDIO_BYTES_PER_TOKEN == 100
    assert estimate == (size - len(clip)) // 4 + 100
    worst = worst_case(
        payload, "chat", estimate, DEFAULT, "openai",
        input_bound=128_000, expanded=True, audio=audio,
    )  # fmt: skip
    assert worst.usage.input_audio_tokens == 100 and worst.usage.output_audio_tokens == 50
    held, _ = worst.held()
    assert (held.input_tokens, held.input_audio_tokens) == (128_000, 128_000)
    text_only = worst_case({"max_tokens": 50}, "chat", 10, DEFAULT, "openai")
    assert text_only.usage.output_audio_tokens == text_only.usage.input_audio_tokens == 0


def test_nesting_of_any_depth_is_read_without_recursion() -> None:
    """orjson parses 1,024 levels; the walk keeps a stack, so no depth is a 500."""
    body = b'{"messages":[' + b'{"content":' * 1000 + b'{"type":"image_url"}' + b"}" * 1000
    payload = orjson.loads(body + b"]}")  # 1,003 levels: each a call when it recursed
    assert expands(payload, "chat") is True


def test_gpt_4o_mini_estimates_an_image_at_what_it_bills_one() -> None:
    """It bills a 1024-pixel square 25,501 tokens (2,833 + 4 tiles x 5,667), where
    other models bill about ``IMAGE_ESTIMATE``."""
    assert image_estimate("gpt-4o-mini") == 25_501
    assert image_estimate("gpt-4o") == image_estimate(None) == IMAGE_ESTIMATE


def test_an_earlier_audio_answer_by_id_is_held_as_audio() -> None:
    """It has no bytes to estimate, but the provider bills it as audio input."""
    payload = {"messages": [{"role": "assistant", "audio": {"id": "audio_1"}},
                            {"role": "user", "content": "and?"}]}  # fmt: skip
    estimate, audio, inline = prompt_estimate(payload, "chat", 100)
    assert (audio, inline) == (1, 0)
    worst = worst_case(
        payload, "chat", estimate, DEFAULT, "openai",
        input_bound=128_000, expanded=True, audio=audio,
    )  # fmt: skip
    held, _ = worst.held()
    assert held.input_audio_tokens == held.input_tokens == 128_000


SEARCH = {"type": "web_search_20250305", "name": "web_search"}


@pytest.mark.parametrize(
    ("kind", "payload", "searches"),
    [
        ("message", {"tools": [{**SEARCH, "max_uses": 3}]}, 3),
        ("message", {"tools": [SEARCH]}, SEARCHES_HELD),
        ("message", {"tools": [{**SEARCH, "max_uses": 2}, {**SEARCH, "max_uses": 4}]}, 6),
        ("message", {"tools": [{**SEARCH, "max_uses": "3"}]}, SEARCHES_HELD),
        ("message", {"tools": [{"type": "custom", "name": "f"}]}, 0),
        ("message", {"tools": [{**SEARCH, "max_uses": 10**12}]}, 10**9),
        ("response", {"tools": [{"type": "web_search"}]}, SEARCHES_HELD),
        ("response", {"tools": [{"type": "web_search_preview"}], "max_tool_calls": 2}, 2),
        ("response", {"tools": [{"type": "file_search"}], "max_tool_calls": 2}, 0),
        ("response", {"max_tool_calls": 2}, 0),
        ("chat", {"tools": [{"type": "web_search"}]}, 0),  # no per-search price in the data
    ],
)
def test_the_searches_a_call_is_held_for(kind: str, payload: dict[str, Any], searches: int) -> None:
    """A web search tool's ``max_uses`` (Anthropic, per tool) or the request's
    ``max_tool_calls`` (Responses) bounds the searches held, else ``SEARCHES_HELD``;
    without a web search tool, none. The worst case carries them."""
    assert searches_bound(payload, kind) == searches
    worst = worst_case({**payload, "max_tokens": 5}, kind, PROMPT, DEFAULT, "openai")
    assert worst.usage.web_searches == searches


def test_a_max_tool_calls_that_is_not_a_whole_number_is_refused() -> None:
    """A Responses request with a web search tool and ``max_tool_calls`` "many" is a 400
    naming the field."""
    with pytest.raises(BadField) as bad:
        searches_bound({"tools": [{"type": "web_search"}], "max_tool_calls": "many"}, "response")
    assert bad.value.param == "max_tool_calls"
