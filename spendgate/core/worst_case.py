"""The most a call can cost, read from its request before it is forwarded (pure, no I/O).

A call is admitted only if its worst case fits every budget and wallet it counts
against, so the worst case has to bound what the provider will bill:

* **input**, billed once whatever ``n`` is: the *estimate* is the body's bytes / 4
  (what a tokens-per-minute limit counts, and what is billed when no usage comes back);
  the hold (``WorstCase.held``) counts the *bound* (``input_bound``) where it is more:

  - text (``prompt_bound``): ASCII bytes / 4, as the estimate (English prose runs 4-5
    bytes a token and the JSON around the text only adds bytes; this part stays an
    estimate: code and dense numbers run nearer 3.5 bytes a token, random strings
    fewer), every byte outside ASCII a token and every ``\\uXXXX`` escape three: no
    token is shorter than a byte, so this bounds CJK, Indic or Thai text, which can
    take a token or more a character (bytes / 4 held it at under one).
  - a prompt of token ids (``text_bound``: a legacy Completions ``prompt`` or an
    Embeddings ``input`` that is a list of ids, or of lists of ids): every id a token
    (``0,`` is one in two bytes, which bytes / 4 held at half).
  - **a prompt the provider expands** (``expands``): an image, a file or audio (by
    URL, id or inline data), a stored conversation or item (``previous_response_id``,
    ``conversation``, a stored ``prompt``, an item or reasoning by id) or a server-side
    tool that reads into the prompt (web search and fetch, file search, remote MCP,
    code execution, tool search): the request's bytes say nothing of its tokens, so the
    bound is the model's context window (the proxy's, with what it knows of stored
    conversations and of images billed past the window).
* **output**: the output cap per generated answer × the number of answers.

  - the cap: ``max_completion_tokens`` or ``max_tokens``, the larger where both are
    given (Chat Completions: a provider reads one of them), ``max_tokens`` (legacy
    Completions), ``max_output_tokens`` (Responses), ``max_tokens`` (Anthropic
    Messages). A Chat request to an OpenAI-compatible server capped by
    ``max_completion_tokens`` alone has it sent as ``max_tokens`` instead, the field such
    servers read (Ollama's ignores the other, and would write past the hold).
    Reasoning ("thinking") tokens, tool-call arguments and structured output are all
    output tokens inside that cap on every one of these APIs.
  - no cap in the request: the route's ``default_max_tokens`` is assumed **and sent
    upstream** as the cap (``max_completion_tokens`` to OpenAI and Azure, ``max_tokens``
    to OpenAI-compatible servers and legacy Completions, ``max_output_tokens`` to
    Responses), so the assumption binds: a model cannot think or write past it.
    Anthropic requires ``max_tokens`` itself; a request without it is refused by the
    provider and not billed, so nothing is added.
  - answers: ``n`` (Chat Completions), ``max(n, best_of)`` for each prompt (legacy
    Completions: the provider generates and bills ``best_of`` answers and returns
    ``n``, and a ``prompt`` that is a list of prompts, strings or token lists, is a batch,
    each prompt answered on its own); one for Responses and Anthropic, which have no
    such field.
* **cache writes**: an Anthropic Messages request that marks ``cache_control`` may have
  its whole prompt written to the cache, which Anthropic bills above the input price
  (1.25× for the 5-minute cache, 2× for the 1-hour one). Such a request also gets a
  ``cached`` worst case, every prompt token a 1-hour cache write, and is held at the
  dearer of the two prices (some models price cache writes below their input). An
  OpenAI-style request (chat, completions, Responses) is cached without asking, and
  the models priced for cache writes bill them (1.25× input): every such request gets
  a ``cached`` worst case, every prompt token a cache write (no 1-hour split); for a
  model with no cache-write price it costs what the plain one does.
* **embeddings**: input only.
* at most ``MAX_TOKENS_PER_CALL`` output tokens, the most any call is recorded with.

* **web searches** (``searches_bound``), billed per search beside the tokens: a
  Responses request with a web search tool may run ``max_tool_calls`` of them, an
  Anthropic one ``max_uses`` per web search tool; where the request sets no limit,
  ``SEARCHES_HELD`` are assumed (not sent upstream: the call is billed the searches
  the provider reports, as any usage).

Other built-in tool fees billed per use (file search, code interpreter sessions) are
not in the price data; they are not part of the worst case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from spendgate.core.usage import MAX_TOKENS_PER_CALL, TokenUsage
from spendgate.core.value import Value

#: the most answers one request may ask for (OpenAI's own limit for ``n``)
MAX_CHOICES = 128
#: the most ``best_of`` legacy Completions accepts
MAX_BEST_OF = 20

#: the web searches a request with a web search tool and no limit on them is held for:
#: Anthropic's server-side loop pauses after 10 iterations (``pause_turn``); OpenAI
#: states no limit. An assumption, as ``default_max_tokens`` is, but not sent upstream
SEARCHES_HELD = 10

#: the fields that cap output, in the order they are read, per request kind
CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completion": ("max_tokens",),
    "response": ("max_output_tokens",),
    "message": ("max_tokens",),
}


class BadField(ValueError):
    """A request field the worst case needs is not usable (the proxy answers 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class WorstCase(Value, frozen=True):
    """A call's worst-case usage, and the output cap to send upstream in place of the
    request's own cap fields (None: the request caps its output itself in a field its
    provider reads, or the API needs none)."""

    usage: TokenUsage
    send_cap: tuple[str, int] | None = None
    #: the same call with its whole prompt written to the cache (the 1-hour one for an
    #: Anthropic request that asks for caching; an OpenAI-style one caches unasked): the
    #: hold is the dearer of the two, since a model may price cache writes above its
    #: input (Anthropic: 1.25x, 2x; OpenAI's models priced for them 1.25x) or below it
    cached: TokenUsage | None = None
    #: the most input tokens the provider can bill the prompt (``prompt_bound``, or
    #: the model's window when it expands it); None: the estimate in ``usage``
    input_bound: int | None = None
    #: the provider expands the prompt: ``input_bound`` is not the request's own text
    expanded: bool = False

    def held(self) -> tuple[TokenUsage, TokenUsage | None]:
        """What admission holds: ``usage`` and ``cached``, the prompt raised to
        ``input_bound`` where that is more; at ``input_bound`` where the provider expands
        the prompt (the bound then covers all of it, its text too)."""
        bound = self.input_bound
        if bound is None or (bound <= self.usage.input_tokens and not self.expanded):
            return self.usage, self.cached
        heard = self.usage.input_audio_tokens
        usage = msgspec.structs.replace(
            self.usage, input_tokens=bound, input_audio_tokens=bound if heard else 0
        )
        cached = self.cached
        if cached is not None:
            one_hour = bound if cached.cache_write_1h_tokens else 0
            cached = msgspec.structs.replace(
                cached, input_tokens=bound, cache_write_tokens=bound, cache_write_1h_tokens=one_hour
            )
        return usage, cached


def _whole(payload: Mapping[str, Any], field: str, low: int, high: int | None) -> int | None:
    """``payload[field]`` as a whole number in [low, high], None when absent; else 400."""
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(f"{field} must be an integer", field)
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadField(f"{field} must be {bound}", field)
    return value


def answers(payload: Mapping[str, Any], kind: str) -> int:
    """How many answers the provider generates (and bills) for this request."""
    if kind == "chat":
        return _whole(payload, "n", 1, MAX_CHOICES) or 1
    if kind == "completion":
        n = _whole(payload, "n", 1, MAX_CHOICES) or 1
        best_of = _whole(payload, "best_of", 1, MAX_BEST_OF) or 1
        return max(n, best_of) * prompts(payload)
    return 1


def prompts(payload: Mapping[str, Any]) -> int:
    """How many prompts a legacy Completions request batches: a ``prompt`` that is a list
    of strings or of token lists is that many, each answered on its own; a string or one
    list of token ids is one."""
    prompt = payload.get("prompt")
    if prompt.__class__ is not list or not prompt or prompt[0].__class__ is int:
        return 1
    return len(prompt)


def cap_field(kind: str, provider_kind: str) -> str:
    """The field that carries an output cap the gateway adds to a request of ``kind``."""
    if kind == "chat" and provider_kind in ("openai", "azure"):
        return "max_completion_tokens"  # the only cap reasoning models accept
    return CAP_FIELDS[kind][-1]


_HIGH_BYTES = bytes(range(0x80, 0x100))


def prompt_bound(body: bytes) -> int:
    """The input tokens a request body's text can be billed (module docstring): ASCII
    bytes / 4, every other byte a token, a ``\\uXXXX`` escape three."""
    if body.isascii():
        ascii_bytes, high = len(body), 0
    else:
        ascii_bytes = len(body.translate(None, _HIGH_BYTES))
        high = len(body) - ascii_bytes
    escapes = body.count(b"\\u")
    # an escape's six bytes already count 1.5 tokens at bytes / 4: add the rest of three
    return ascii_bytes // 4 + high + (escapes * 3 + 1) // 2


#: the field that may carry a request kind's prompt as token ids
_TOKEN_ID_FIELDS = {"completion": "prompt", "embedding": "input"}


def text_bound(payload: Mapping[str, Any], kind: str, body: bytes) -> int:
    """``prompt_bound(body)``, with a prompt given as token ids counted a token an id (the
    module docstring) in place of its digits' bytes / 4. A prompt of text costs a lookup."""
    bound = prompt_bound(body)
    ids = token_lists(payload, kind)
    if not ids:
        return bound
    spelled = sum(len(msgspec.json.encode(each)) for each in ids)
    return max(bound, bound - spelled // 4 + sum(len(each) for each in ids))


def token_lists(payload: Mapping[str, Any], kind: str) -> list[list[Any]]:
    """The prompts of a request given as token ids (a legacy Completions ``prompt``, an
    Embeddings ``input``): one list of ids, or each list in a batch of them."""
    field = _TOKEN_ID_FIELDS.get(kind)
    given = payload.get(field) if field is not None else None
    if given.__class__ is not list or not given:
        return []
    lists = [given] if given[0].__class__ is int else given
    return [each for each in lists if each.__class__ is list]


def worst_case(
    payload: Mapping[str, Any],
    kind: str,
    prompt: int,
    default_max_tokens: int,
    provider_kind: str,
    *,
    cache_writes: bool = False,
    input_bound: int | None = None,
    expanded: bool = False,
    audio: int = 0,
) -> WorstCase:
    """The worst case of one request (see the module docstring) whose prompt is
    estimated at ``prompt`` tokens (its bytes / 4); 400 for a cap, ``n`` or ``best_of``
    that is not a whole number in range. ``cache_writes``: the provider may write the
    prompt to its cache and bill the writes: an Anthropic Messages request that marks
    ``cache_control`` (at the 1-hour rate, the dearer), or any other request on a model
    priced for cache writes (OpenAI caches prompts unasked and bills the writes where the
    model prices them; the caller knows the price);
    ``input_bound``: the most input tokens it can be billed (``expanded``: because the
    provider expands the prompt); ``audio``: how many of the ``prompt`` tokens are audio.
    A Chat request whose ``modalities`` ask for audio has its output held and estimated
    as audio (OpenAI bills audio output at several times text)."""
    if kind not in CAP_FIELDS:  # embeddings: no output
        return WorstCase(TokenUsage(input_tokens=prompt), input_bound=input_bound)
    given = [c for c in (_whole(payload, f, 0, None) for f in CAP_FIELDS[kind]) if c is not None]
    field, send = cap_field(kind, provider_kind), None
    if not given:
        cap = default_max_tokens
        if kind != "message":
            send = (field, cap)
    else:  # both chat caps: the provider reads one of them, so the larger binds
        cap = max(given)
        if field == "max_tokens" and kind == "chat" and payload.get(field) is None:
            # an OpenAI-compatible server reads max_tokens, and some ignore
            # max_completion_tokens (Ollama): the cap goes out in the field they read
            send = (field, cap)
    # no call is ever recorded above MAX_TOKENS_PER_CALL (``usage.plausible``), so no
    # worst case needs to be: it keeps every hold far inside the counters' exact range
    output = min(cap * answers(payload, kind), MAX_TOKENS_PER_CALL)
    searches = searches_bound(payload, kind)
    modalities = payload.get("modalities") if kind == "chat" else None
    spoken = output if modalities.__class__ is list and "audio" in modalities else 0
    usage = TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        input_audio_tokens=min(audio, prompt),
        output_audio_tokens=spoken,
        web_searches=searches,
    )
    cached = None
    if cache_writes:
        # OpenAI's writes (``prompt_tokens_details.cache_write_tokens``) have no 1-hour split
        cached = TokenUsage(
            input_tokens=prompt,
            output_tokens=output,
            cache_write_tokens=prompt,
            cache_write_1h_tokens=prompt if kind == "message" else 0,
            web_searches=searches,
        )
    return WorstCase(usage, send, cached, input_bound, expanded)


def searches_bound(payload: Mapping[str, Any], kind: str) -> int:
    """The web searches a request's web search tools may run (the module docstring): 0
    without one; 400 for a ``max_tool_calls`` that is not a whole number."""
    tools = payload.get("tools") if kind in ("response", "message") else None
    if tools.__class__ is not list:
        return 0
    searching = [tool for tool in tools if _tool_of(tool, "web_search")]
    if not searching:
        return 0
    if kind == "response":
        limit = _whole(payload, "max_tool_calls", 0, None)
        return SEARCHES_HELD if limit is None else min(limit, MAX_TOKENS_PER_CALL)
    held = 0
    for tool in searching:  # the provider refuses a max_uses that is not a whole number
        uses = tool.get("max_uses")
        whole = uses.__class__ is int and uses > 0
        held += uses if whole else SEARCHES_HELD
    return min(held, MAX_TOKENS_PER_CALL)


def marks_cache(payload: Any, body: bytes) -> bool:
    """Whether a request asks for prompt caching: ``cache_control`` anywhere in it
    (top level, ``system``, a message's content block, a tool). The raw bytes answer
    at once; only a body with ``\\u`` escapes, which can spell the key another way,
    is walked. A mention inside text also counts: it can only make a worst case dearer."""
    if b'"cache_control"' in body:
        return True
    if b"\\u" not in body:
        return False
    pending = [payload]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "cache_control" in node:
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


#: content part and block types whose tokens the provider makes from something other
#: than the request's text: images, files and audio, and stored items by reference
_EXPANDING_PARTS = frozenset({
    "image_url", "input_audio", "file",  # Chat Completions (and Responses' audio)
    "input_image", "input_file", "item_reference", "computer_screenshot",  # Responses
    "image", "document", "container_upload",  # Anthropic Messages
    "reasoning",  # Responses, when sent by id without its encrypted content
})  # fmt: skip
#: the part types whose inline data is not text: images, and audio
_MEDIA = frozenset({"image_url", "input_image", "image", "computer_screenshot", "input_audio"})
#: base64 bytes of audio a token is estimated at: OpenAI bills audio about ten tokens a
#: second, which is ~21 kB of base64 a second of 128 kbit/s MP3 (~64 kB of 24 kHz WAV)
AUDIO_BYTES_PER_TOKEN = 2048
#: the input tokens an image is estimated at where no usage comes back: about what
#: Anthropic bills a 1.15-megapixel image (gpt-4o bills a 1024-pixel square 765)
IMAGE_ESTIMATE = 1_600
#: an Anthropic document of these sources is text in the request (its bytes bound it)
_TEXT_SOURCES = ("text", "content")
#: server-side tools whose results the provider reads into the prompt
_EXPANDING_TOOLS = (
    "web_search", "web_fetch", "file_search", "mcp", "code_interpreter", "code_execution",
    "tool_search",
)  # fmt: skip
#: a request field that points at a prompt stored with the provider (Responses)
_STORED_CONTEXT = ("previous_response_id", "conversation", "prompt")
#: request fields that put server-side state in the prompt (Anthropic Messages: remote
#: MCP servers, a code-execution container with its files or skills)
_SERVER_STATE = ("mcp_servers", "container")
#: images a model bills at more tokens than its context window holds, by the priced
#: model's name: (a 1024-pixel square at high detail, the most: a 768x2048 image);
#: gpt-4o-mini bills 2,833 + 5,667 a 512-pixel tile
_BILLED_PER_IMAGE = {"gpt-4o-mini": (25_501, 48_169)}


def expands(payload: Mapping[str, Any], kind: str) -> bool:
    """Whether the provider makes the prompt's tokens from more than the request's text
    (the module docstring's list), so its bytes cannot bound them. Read from the parsed
    request (the parser has undone any escapes), part by part: its cost grows with the
    messages' parts, not with their text."""
    if kind == "chat":
        if payload.get("web_search_options") is not None:  # {} asks for the search too
            return True
    elif kind in ("response", "message"):
        for field in _STORED_CONTEXT if kind == "response" else _SERVER_STATE:
            if payload.get(field):
                return True
    else:  # legacy completions and embeddings: text only
        return False
    tools = payload.get("tools")
    if tools.__class__ is list:
        for tool in tools:
            if _tool_of(tool, _EXPANDING_TOOLS):
                return True
    return expanding_parts(payload, kind) > 0


def expanding_parts(
    payload: Mapping[str, Any], kind: str, inline: list[tuple[bool, int]] | None = None
) -> int:
    """How many parts of the request's turns (and Anthropic system blocks) the provider
    expands: images, files, audio, items stored by id. ``inline``: gets, for each image
    and audio part, whether it is audio and the bytes of its inline data (a ``data:``
    URL, a base64 source or audio data; 0 for one by URL or id)."""
    turns = _parts(payload.get("input" if kind == "response" else "messages"), inline)
    return turns + (_parts(payload.get("system"), inline) if kind == "message" else 0)


def prompt_estimate(
    payload: Mapping[str, Any], kind: str, size: int, per_image: int = IMAGE_ESTIMATE
) -> tuple[int, int, int]:
    """The input tokens a prompt the provider expands is estimated at, for a body of
    ``size`` bytes; how many of them are audio; and the bytes of the media's inline
    data. The estimate is the bytes / 4 but for the inline data of images, which the
    provider bills as an image (``per_image`` each), not as text (a 500 kB photo is
    125,000 tokens at bytes / 4, about a thousand as an image), and of audio, a token
    per ``AUDIO_BYTES_PER_TOKEN`` of its base64."""
    media: list[tuple[bool, int]] = []
    expanding_parts(payload, kind, media)
    images = sum(1 for audio, _ in media if not audio)
    heard = sum(inline for audio, inline in media if audio) // AUDIO_BYTES_PER_TOKEN
    if any(audio for audio, _ in media):  # audio by id has no length to read: one token
        heard = max(heard, 1)  # at least, so that it is held as audio
    inline = sum(inline for _, inline in media)
    return max(0, size - inline) // 4 + images * per_image + heard, heard, inline


def image_bound(price_model: str, parts: int) -> int:
    """The input tokens ``parts`` images can be billed on a model that bills images
    past its context window (0 on any other)."""
    for prefix, (_, most) in _BILLED_PER_IMAGE.items():
        if price_model.startswith(prefix):
            return parts * most
    return 0


def image_estimate(price_model: str | None) -> int:
    """The input tokens an image is estimated at on the priced model: ``IMAGE_ESTIMATE``
    but where the model bills images at far more (a 1024-pixel square on gpt-4o-mini)."""
    for prefix, (typical, _) in _BILLED_PER_IMAGE.items():
        if price_model is not None and price_model.startswith(prefix):
            return typical
    return IMAGE_ESTIMATE


def continues(payload: Mapping[str, Any], kind: str) -> str | None:
    """The ``previous_response_id`` of a Responses request whose prompt expands by that
    stored conversation alone (nothing else in it does): the previous answer's tokens
    then bound it, where they are known (``proxy.contexts``)."""
    previous = payload.get("previous_response_id") if kind == "response" else None
    if not isinstance(previous, str) or not previous:
        return None
    return None if expands({**payload, "previous_response_id": None}, kind) else previous


def _tool_of(tool: object, types: str | tuple[str, ...]) -> bool:
    """Whether ``tool`` is a tool whose ``type`` starts with one of ``types`` (a tool's
    type carries its version: ``web_search_20250305``)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    return isinstance(kind, str) and kind.startswith(types)


def _parts(items: object, inline: list[tuple[bool, int]] | None = None) -> int:
    """How many dicts in ``items`` (a list, or one dict), their ``content``, a tool
    result's ``output`` and a document's ``source.content`` blocks, all the way down,
    the provider expands. A message of plain
    text costs a few lookups; nesting of any depth a stack, not recursion."""
    count = 0
    pending = [items]
    while pending:
        items = pending.pop()
        if items.__class__ is dict:
            items = [items]
        elif items.__class__ is not list:
            continue
        for node in items:
            if node.__class__ is not dict:
                continue
            kind = node.get("type")
            if kind.__class__ is str:
                if kind in _EXPANDING_PARTS and _expanded(kind, node):
                    count += 1
                    if inline is not None and kind in _MEDIA:
                        inline.append((kind == "input_audio", _inline_bytes(node)))
            elif node.get("audio").__class__ is dict:  # an earlier audio answer, by id
                count += 1
                if inline is not None:
                    inline.append((True, 0))
            elif (  # a Responses item reference may leave out its type
                kind is None and "id" in node and "role" not in node and "content" not in node
            ):
                count += 1
            for field in ("content", "output"):
                inner = node.get(field)
                if inner.__class__ is list or inner.__class__ is dict:
                    pending.append(inner)
            source = node.get("source")  # an Anthropic document of content blocks
            if source.__class__ is dict and source.get("content").__class__ is list:
                pending.append(source["content"])
    return count


def _inline_bytes(image: dict[str, Any]) -> int:
    """The bytes of an image or audio part's inline data: a ``data:`` URL (Chat
    ``image_url.url``, Responses ``image_url``), an Anthropic base64 ``source``, an
    ``input_audio``'s ``data``; 0 for one by URL or id."""
    audio = image.get("input_audio")
    if audio.__class__ is dict:
        data = audio.get("data")
        return len(data) if data.__class__ is str else 0
    url = image.get("image_url")
    if url.__class__ is dict:
        url = url.get("url")
    if url.__class__ is str:
        return len(url) if url.startswith("data:") else 0
    source = image.get("source")
    if source.__class__ is dict and source.get("type") == "base64":
        data = source.get("data")
        return len(data) if data.__class__ is str else 0
    return 0


def _expanded(kind: str, node: dict[str, Any]) -> bool:
    """Whether a part of an expanding ``kind`` really expands: not a document whose
    source is text in the request, nor a reasoning item sent with its content."""
    if kind == "document":
        source = node.get("source")
        return not (source.__class__ is dict and source.get("type") in _TEXT_SOURCES)
    if kind == "reasoning":
        return not node.get("encrypted_content")
    return True
