"""Where a call goes: the upstream URL and auth headers for each provider kind (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from spendgate.errors import InvalidRequest
from spendgate.settings import ModelRoute

Wire = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A proxied endpoint: its path under the provider and the ledger's request kind;
    ``counts``: a token count (free at the provider), passed through unbilled, with no
    ledger row and no budget, wallet or rate limit held (``ProxyApp._count``)."""

    kind: str
    wire: Wire
    path: str
    streams: bool
    counts: bool = False


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint("chat", "openai", "/chat/completions", True),
    "/v1/completions": Endpoint("completion", "openai", "/completions", True),
    "/v1/embeddings": Endpoint("embedding", "openai", "/embeddings", False),
    "/v1/responses": Endpoint("response", "openai", "/responses", True),
    "/v1/messages": Endpoint("message", "anthropic", "/v1/messages", True),
    "/v1/messages/count_tokens": Endpoint(
        "count_tokens", "anthropic", "/v1/messages/count_tokens", False, counts=True
    ),
    "/v1/responses/input_tokens": Endpoint(
        "input_tokens", "openai", "/responses/input_tokens", False, counts=True
    ),
}

#: the provider kinds with a token-count endpoint, by the proxy endpoint's kind: Azure
#: OpenAI and the OpenAI-compatible servers (vLLM, Ollama, Gemini…) have no
#: ``/responses/input_tokens``, and none of them a Messages ``count_tokens``
_COUNTED_BY = {
    "count_tokens": ("anthropic", "simulated"),
    "input_tokens": ("openai", "simulated"),
}

#: the proxy's paths without their /v1: what an OpenAI SDK whose ``base_url`` lacks the /v1
#: calls (``/chat/completions``), each with the path spendgate serves it at
_WITHOUT_V1 = {path.removeprefix("/v1"): path for path in (*ENDPOINTS, "/v1/models")}


#: what a 404 under /v1 says the proxy does serve (the images, audio and files APIs, and
#: reading a stored response back, are not proxied)
SERVED = (
    "spendgate proxies POST /v1/chat/completions, /v1/completions, /v1/embeddings, "
    "/v1/responses, /v1/responses/input_tokens, /v1/messages and "
    "/v1/messages/count_tokens, and GET /v1/models"
)


def misrouted(path: str) -> str | None:
    """For a path that is a proxy call with a ``base_url`` mistake, what to change, to add
    to its 404 (which was the console's HTML page, or a bare "unknown endpoint", so the
    SDKs said only "Error code: 404"); None for any other path."""
    if path.startswith("/v1/v1/"):
        return (
            "the path has /v1 twice: an Anthropic SDK's base_url is the gateway's address "
            "without /v1 (http://host:port), an OpenAI SDK's ends in /v1 once"
        )
    served = _WITHOUT_V1.get("/models" if path.startswith("/models/") else path)
    if served is None:
        return None
    return (
        f"spendgate serves it at {served}: an OpenAI SDK's base_url ends in /v1 "
        "(http://host:port/v1), an Anthropic SDK's does not (http://host:port)"
    )


#: client headers worth passing on to Anthropic
_ANTHROPIC_PASS = ("anthropic-version", "anthropic-beta")


def _uncounted(route: ModelRoute, endpoint: Endpoint) -> InvalidRequest:
    """The 400 for a token count of a model whose provider has no such endpoint."""
    kind = route.provider.kind
    if endpoint.wire == "anthropic" and kind != "anthropic":
        what = "an OpenAI-style provider, which has no Messages token count"
    elif endpoint.wire == "openai" and kind == "anthropic":
        what = "Anthropic; count its tokens on /v1/messages/count_tokens"
    else:
        what = f"a provider of kind {kind!r}, which has no /responses/input_tokens endpoint"
    return InvalidRequest(
        f"model {route.name!r} is served by {what}: spendgate cannot count its input tokens "
        "(estimate them client-side, or read usage.input_tokens from a real call)",
        param="model",
    )


def upstream_url(route: ModelRoute, endpoint: Endpoint) -> str:
    provider = route.provider
    kind = provider.kind
    if endpoint.counts and kind not in _COUNTED_BY[endpoint.kind]:
        raise _uncounted(route, endpoint)
    if endpoint.wire == "anthropic":
        if kind not in ("anthropic", "simulated"):
            raise InvalidRequest(
                f"model {route.name!r} is served by an OpenAI-style provider; "
                "call it on /v1/chat/completions",
                param="model",
            )
        base = provider.base_url if kind == "anthropic" else "simulated://"
        return base + endpoint.path
    if kind == "anthropic":
        raise InvalidRequest(
            f"model {route.name!r} is an Anthropic model; call it on /v1/messages", param="model"
        )
    if kind == "simulated":
        return "simulated:///v1" + endpoint.path
    if kind == "azure":
        if endpoint.kind == "response":
            return f"{provider.base_url}/openai/responses?api-version={provider.api_version}"
        return (
            f"{provider.base_url}/openai/deployments/{route.upstream_model}{endpoint.path}"
            f"?api-version={provider.api_version}"
        )
    return provider.base_url + endpoint.path


def upstream_headers(
    route: ModelRoute, endpoint: Endpoint, client: Mapping[str, str]
) -> dict[str, str]:
    """Provider credentials replace the client's virtual key; it never leaves spendgate."""
    headers = {"content-type": "application/json", "accept-encoding": "gzip, deflate"}
    provider = route.provider
    key = provider.api_key
    if provider.kind == "anthropic" or endpoint.wire == "anthropic":
        headers["anthropic-version"] = client.get("anthropic-version", "2023-06-01")
        if "anthropic-beta" in client:
            headers["anthropic-beta"] = client["anthropic-beta"]
        if key:
            headers["x-api-key"] = key
    elif provider.kind == "azure":
        if key:
            headers["api-key"] = key
    elif key:
        headers["authorization"] = f"Bearer {key}"
    return headers
