"""What shape the simulated provider's answer takes (pure): text, a JSON document, or a
call of one of the request's tools — so the demo shows tool calls and structured output.

* Tools: when a request offers function tools and its ``tool_choice`` allows a call
  (absent, ``auto``, ``required``/``any``, or naming a tool), the answer calls the named
  tool, else the first one, with arguments made from the tool's parameter schema.
  ``tool_choice: "none"`` (Anthropic ``{"type": "none"}``) answers text.
* JSON: ``response_format`` (chat), ``text.format`` (responses), ``output_config.format``
  or ``output_format`` (Anthropic) of type ``json_object`` or ``json_schema`` get a JSON
  document: ``{"reply": …}``, or one that fits the given schema.

Values that fit a schema (:func:`sample`) are deterministic: strings are words chosen by
the prompt's hash, so the same request gets the same document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Api = Literal["chat", "responses", "anthropic"]
#: how deep :func:`sample` follows nested schemas (recursive ``$ref``s end there)
MAX_DEPTH = 8
FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "demo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


@dataclass(frozen=True, slots=True)
class Shape:
    """``text``; ``json`` (``schema`` None: any object); or ``tool`` (``name``, ``schema``
    of its arguments)."""

    kind: Literal["text", "json", "tool"] = "text"
    schema: Mapping[str, Any] | None = None
    name: str = ""


TEXT = Shape()


def shape_of(api: Api, body: Mapping[str, Any]) -> Shape:
    """The answer's shape for a request ``body`` of ``api``."""
    tool = _tool(api, body)
    if tool is not None:
        return tool
    return _json(api, body) or TEXT


def _tools(api: Api, body: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, parameters schema) of each function tool offered."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, Mapping):
            continue
        spec: Any = None
        if api == "chat" and tool.get("type") == "function":
            spec = tool.get("function")
            params = "parameters"
        elif api == "responses" and tool.get("type") == "function":
            spec, params = tool, "parameters"
        elif api == "anthropic" and tool.get("type") in (None, "custom"):
            spec, params = tool, "input_schema"
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            out.append((spec["name"], _schema(spec.get(params))))
    return out


def _schema(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {"type": "object", "properties": {}}


def _tool(api: Api, body: Mapping[str, Any]) -> Shape | None:
    tools = _tools(api, body)
    if not tools:
        return None
    choice = body.get("tool_choice")
    wanted: str | None = None
    if isinstance(choice, str):
        if choice == "none":
            return None
    elif isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "none":
            return None
        named = choice.get("function") if api == "chat" else choice
        if isinstance(named, Mapping) and isinstance(named.get("name"), str):
            wanted = named["name"]
    name, schema = next(((n, s) for n, s in tools if n == wanted), tools[0])
    return Shape("tool", schema, name)


def _json(api: Api, body: Mapping[str, Any]) -> Shape | None:
    if api == "chat":
        fmt = body.get("response_format")
        nested = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
        schema = nested.get("schema") if isinstance(nested, Mapping) else None
    elif api == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
        schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
    else:
        config = body.get("output_config")
        fmt = config.get("format") if isinstance(config, Mapping) else None
        fmt = fmt if fmt is not None else body.get("output_format")
        schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_object":
        return Shape("json")
    if fmt.get("type") == "json_schema":
        return Shape("json", _schema(schema))
    return None


def document(shape: Shape, words: Sequence[str]) -> str:
    """The JSON text a ``json`` or ``tool`` shape answers with (compact, deterministic)."""
    if shape.schema is None:
        value: Any = {"reply": " ".join(words)}
    else:
        value = sample(shape.schema, shape.schema, words, 0)
    return orjson.dumps(value).decode()


def sample(
    schema: Mapping[str, Any], root: Mapping[str, Any], words: Sequence[str], depth: int
) -> Any:
    """A value that fits ``schema`` (``root`` resolves local ``$ref``s)."""
    schema = _resolved(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], Mapping):
            return sample(options[0], root, words, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if depth >= MAX_DEPTH:
        return None if kind not in ("object", "array") else ({} if kind == "object" else [])
    return _typed(str(kind), schema, root, words, depth)


def _typed(
    kind: str, schema: Mapping[str, Any], root: Mapping[str, Any], words: Sequence[str], depth: int
) -> Any:
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        return {
            str(name): sample(_schema(sub), root, words[n + 1 :] or words, depth + 1)
            for n, (name, sub) in enumerate(props.items())
        }
    if kind == "array":
        items = _schema(schema.get("items")) if "items" in schema else {"type": "string"}
        count = max(1, int(schema.get("minItems") or 1))
        return [sample(items, root, words[n:] or words, depth + 1) for n in range(min(count, 3))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        base = 1 if low is None else int(low) + (1 if "exclusiveMinimum" in schema else 0)
        high = schema.get("maximum")
        value = base if high is None else min(base, int(high))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    text = " ".join(words[:3]) or "simulated"
    least = int(schema.get("minLength") or 0)
    return (text + " simulated" * least)[: max(least, len(text))]


def _resolved(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with a local ``$ref`` (``#/$defs/Name``) followed (a few hops at most)."""
    for _ in range(MAX_DEPTH):
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            return {"type": "string"}
        schema = target
    return schema
