"""The simulated provider answers tool calls and structured output, through the gateway
with the openai and anthropic SDKs (demo models), streamed and not, billed like text."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

from spendgate.proxy import simulated
from spendgate.proxy.simulated_shapes import Shape, sample, shape_of
from tests.conftest import RunningGateway

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
CHAT_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
MSG: Any = [{"role": "user", "content": "weather in Lisbon?"}]


class Answer(BaseModel):
    title: str
    score: int
    tags: list[str]
    done: bool


def oa(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.create_key()["key"], max_retries=0)


def test_chat_answers_a_tool_call_the_sdk_parses(gateway: RunningGateway) -> None:
    """Tools offered: the first (or the named) tool is called with arguments that fit its
    schema, finish_reason tool_calls, billed; tool_choice "none" answers text; streamed
    deltas add up to the same call."""
    client = oa(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, tools=CHAT_TOOLS
    )
    done = raw.parse()
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) > 0
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit", "days"} and arguments["unit"] == "celsius"
    assert 1 <= arguments["days"] <= 7 and isinstance(arguments["city"], str)

    named = client.chat.completions.create(
        model="demo-small",
        messages=MSG,
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]
    text = client.chat.completions.create(
        model="demo-small", messages=MSG, tools=CHAT_TOOLS, tool_choice="none"
    )
    assert text.choices[0].message.tool_calls is None and text.choices[0].message.content

    pieces, names, finish = [], [], None
    for chunk in client.chat.completions.create(
        model="demo-small", messages=MSG, tools=CHAT_TOOLS, stream=True
    ):
        for choice_delta in chunk.choices:
            finish = choice_delta.finish_reason or finish
            for tc in choice_delta.delta.tool_calls or []:
                names += [tc.function.name] if tc.function and tc.function.name else []
                pieces.append(tc.function.arguments or "" if tc.function else "")
    assert names == ["get_weather"] and finish == "tool_calls"
    assert json.loads("".join(pieces)) == arguments


def test_chat_json_modes_give_json_that_loads(gateway: RunningGateway) -> None:
    """response_format json_object: json.loads(content) works; json_schema (the SDK's
    parse() with a pydantic model) gives a document the model validates."""
    client = oa(gateway)
    loose = client.chat.completions.create(
        model="demo-small", messages=MSG, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    parsed = client.chat.completions.parse(model="demo-large", messages=MSG, response_format=Answer)
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer) and answer.tags and answer.done is True


def test_responses_call_a_tool_and_answer_json(gateway: RunningGateway) -> None:
    """The Responses API: a function_call output item (streamed and not), and a JSON
    text.format whose output_text loads."""
    client = oa(gateway)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    made = client.responses.create(model="demo-small", input="weather?", tools=tools)
    [item] = made.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert set(json.loads(item.arguments)) == {"city", "unit", "days"}
    streamed = ""
    with client.responses.stream(model="demo-small", input="weather?", tools=tools) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                streamed += event.delta
        final = stream.get_final_response()
    assert json.loads(streamed) == json.loads(item.arguments)
    assert final.output[0].type == "function_call"
    fmt: Any = {"format": {"type": "json_schema", "name": "answer", "schema": WEATHER}}
    shaped = client.responses.create(model="demo-small", input="json please", text=fmt)
    assert set(json.loads(shaped.output_text)) == {"city", "unit", "days"}


def test_anthropic_uses_a_tool_and_answers_json(gateway: RunningGateway) -> None:
    """Messages: a tool_use block (stop_reason tool_use) whose input fits the schema, the
    same input streamed as input_json_delta; output_config json_schema gives JSON text."""
    client = anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.create_key()["key"], max_retries=0
    )
    tools: Any = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
    made = client.messages.create(model="demo-large", max_tokens=200, messages=MSG, tools=tools)
    assert made.stop_reason == "tool_use"
    [block] = made.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert set(block.input) == {"city", "unit", "days"}
    with client.messages.stream(
        model="demo-large", max_tokens=200, messages=MSG, tools=tools
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == block.input
    none: Any = {"type": "none"}
    plain = client.messages.create(
        model="demo-large", max_tokens=200, messages=MSG, tools=tools, tool_choice=none
    )
    assert plain.content[0].type == "text"
    config: Any = {"format": {"type": "json_schema", "schema": WEATHER}}
    shaped = client.messages.create(
        model="demo-large", max_tokens=200, messages=MSG, output_config=config
    )
    assert shaped.content[0].type == "text"
    assert set(json.loads(shaped.content[0].text)) == {"city", "unit", "days"}


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string", "format": "date"}, "2026-01-01"),
        ({"type": "number", "exclusiveMinimum": 3}, 4.0),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, 1),
        ({"type": ["null", "boolean"]}, True),
        ({"const": "x"}, "x"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
    ],
)
def test_sample_fits_the_schema(schema: dict[str, Any], value: Any) -> None:
    """Sample values honour formats, bounds, unions, consts and array lengths."""
    assert sample(schema, schema, ["budget"], 0) == value


def test_a_recursive_schema_ends_and_the_text_path_is_unchanged() -> None:
    """A $ref that refers to itself stops at a fixed depth; a request with no tools or
    format is answered exactly as plain text (shape text)."""
    tree = {"$defs": {"Node": {"type": "object", "properties": {"kid": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node"}  # fmt: skip
    nested = sample(tree, tree, ["w"], 0)
    depth = 0
    while nested:
        nested, depth = nested["kid"], depth + 1
    assert depth == 8
    body = {"model": "demo-small", "messages": MSG}
    assert shape_of("chat", body) == Shape()
    _, reply = simulated.openai_response("/chat/completions", body)
    assert reply["choices"][0]["message"]["content"].startswith("Simulated reply:")
