"""The proxy hot path as a raw ASGI app: authenticate, route, forward, meter, record.

No framework sits between uvicorn and this class: every microsecond here is paid
on every call. Decisions (routing, usage, price) are pure functions elsewhere; this
module does the I/O in order and writes one ledger entry per forwarded call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from spendgate.core.budget_rules import Subject
from spendgate.core.clock import Clock
from spendgate.core.money import format_usd
from spendgate.core.pricing import PriceContextKey, PriceTable, price_context
from spendgate.core.usage import TokenUsage
from spendgate.core.value import Value
from spendgate.core.worst_case import (
    CAP_FIELDS,
    SEARCHES_HELD,
    BadField,
    WorstCase,
    continues,
    expanding_parts,
    expands,
    image_bound,
    image_estimate,
    marks_cache,
    prompt_estimate,
    text_bound,
    worst_case,
)
from spendgate.counters import PolicyStale
from spendgate.counters.redis_pool import counters_failed
from spendgate.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    DatabaseUnavailable,
    InsufficientFunds,
    InvalidRequest,
    LedgerBacklogFull,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    ShuttingDown,
    SpendgateError,
    StateUnavailable,
    UnknownModel,
    UpstreamAuthFailed,
    UpstreamTimeout,
)
from spendgate.guard import CallGuard, Guarded
from spendgate.guard.enforcement import Enforcer
from spendgate.guard.failover import FailoverGuard
from spendgate.guard.tickets import TicketDesk
from spendgate.observability.metrics import GatewayMetrics
from spendgate.proxy import simulated
from spendgate.proxy.auth import KeyCache, presented_secret
from spendgate.proxy.contexts import ResponseContexts
from spendgate.proxy.metering import StreamMeter, usage_from_body
from spendgate.proxy.routing import (
    ENDPOINTS,
    SERVED,
    Endpoint,
    misrouted,
    upstream_headers,
    upstream_url,
)
from spendgate.proxy.transport import Transport, UpstreamRequest, UpstreamResponse
from spendgate.proxy.wire import (
    Receive,
    Scope,
    Send,
    cost_comment,
    cost_figure,
    header_dict,
    read_body,
    send_bytes,
    send_error,
    start_stream,
    stream_error_event,
)
from spendgate.ratelimit.gate import RateGate, RateLimited
from spendgate.security.auth_throttle import AuthThrottle, client_address
from spendgate.security.credentials import RequestIds
from spendgate.settings import ModelRoute, Settings
from spendgate.stopping import end_tasks
from spendgate.store.database import database_failure
from spendgate.store.directory import KeyRecord
from spendgate.store.events import PendingEvent, capture_events
from spendgate.store.ledger import LedgerEntry, LedgerWriter

log = logging.getLogger("spendgate.proxy")

_TAG = re.compile(r"^[A-Za-z0-9_.:/=+-]{1,64}$")
MAX_TAGS = 20
#: how many times a call is planned again after finding its process's policies stale
REPLANS = 3
#: the input a request with Anthropic's 1M-token context beta (``anthropic-beta:
#: context-1m-…``) may be billed, whatever context window the price data gives its model
LONG_CONTEXT_TOKENS = 1_000_000
#: a provider error's headers that the SDKs pace (or skip) their retries by: passed on
_RETRY_ADVICE = ("retry-after", "retry-after-ms", "x-should-retry")


class Call(Value, frozen=True):
    """One authenticated, routed call about to be forwarded."""

    request_id: str
    key: KeyRecord
    route: ModelRoute
    endpoint: Endpoint
    tags: list[str]
    stream: bool
    started_at: datetime
    started_mono: float
    #: the most it can cost (``core.worst_case``), and the output cap to send upstream
    worst: WorstCase
    #: a Responses call whose answer the provider stores (``store`` not false): a later
    #: call may continue it (``proxy.contexts``)
    stored: bool = False
    #: the request's price context (``core.pricing.price_context``): a service tier or
    #: speed that the provider bills at other prices, held at them (and billed at them
    #: unless the provider reports another: ``PriceTable.price``)
    context: PriceContextKey = ()

    def subject(self) -> Subject:
        key = self.key
        return Subject(
            key.org_id,
            key.team_id,
            key.user_id,
            key.agent_id,
            key.id,
            tuple(self.tags),
            self.route.provider.name,
            self.route.name,
            self.endpoint.kind,
        )


def request_tags(key: KeyRecord, headers: Mapping[str, str]) -> list[str]:
    """The key's tags plus ``x-spendgate-tags`` (comma separated) when the key allows it."""
    raw = headers.get("x-spendgate-tags")
    if not raw:
        return list(key.tags)
    if not key.allow_request_tags:
        raise PermissionDenied("this key may not set x-spendgate-tags", param="x-spendgate-tags")
    extra = [t.strip() for t in raw.split(",") if t.strip()]
    bad = [t for t in extra if not _TAG.match(t)]
    if bad:
        raise InvalidRequest(
            f"invalid tag {bad[0]!r}: use 1-64 of A-Z a-z 0-9 _ . : / = + -",
            param="x-spendgate-tags",
        )
    tags = list(dict.fromkeys([*key.tags, *extra]))
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} tags per call", param="x-spendgate-tags")
    return tags


def parse_request(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    return payload


def from_upstream(upstream: Mapping[str, str]) -> dict[str, str]:
    """The provider's response headers a proxied answer passes on: its request id (as
    ``x-upstream-request-id``), and whether the simulated provider answered."""
    headers = {}
    if "x-request-id" in upstream:
        headers["x-upstream-request-id"] = upstream["x-request-id"]
    if "x-spendgate-simulated" in upstream:
        headers["x-spendgate-simulated"] = "true"
    return headers


def retry_advice(upstream: Mapping[str, str]) -> dict[str, str]:
    """A provider error's headers that the SDKs pace (or skip) their retries by."""
    return {name: upstream[name] for name in _RETRY_ADVICE if name in upstream}


def tell_remaining(headers: dict[str, str], remaining: int | None) -> None:
    """``x-spendgate-budget-remaining-usd``: the tightest budget's remaining nanos (None:
    no budget applies, no header), never below zero."""
    if remaining is not None:
        headers["x-spendgate-budget-remaining-usd"] = format_usd(max(0, remaining))


def input_bounds(settings: Settings, prices: PriceTable) -> dict[str, int | None]:
    """Per model, the most input tokens a prompt the provider expands can be billed: its
    ``max_input_tokens``, else the price data's context window (None: neither known)."""
    return {
        name: route.max_input_tokens or prices.context_window(route.price)
        for name, route in settings.models.items()
    }


class ProxyApp:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        keys: KeyCache,
        prices: PriceTable,
        ledger: LedgerWriter,
        transports: Mapping[str, Transport],
        on_unpriced: Callable[[Call, TokenUsage], None],
        enforcer: Enforcer,
        rate_gate: RateGate,
        auth_throttle: AuthThrottle | None = None,
        on_implausible: Callable[[Call, TokenUsage], None] | None = None,
        metrics: GatewayMetrics | None = None,
        guard: CallGuard | FailoverGuard | None = None,
        tickets: TicketDesk | None = None,
    ) -> None:
        self._tickets = tickets
        self._metrics = metrics or GatewayMetrics(clock.monotonic)
        self._on_implausible = on_implausible
        self._throttle = AuthThrottle(limit=0) if auth_throttle is None else auth_throttle
        self._enforcer = enforcer
        self._rate_gate = rate_gate
        #: the holds: with Redis, behind its circuit breaker (``guard.failover``)
        self._guard = guard or CallGuard(rate_gate, enforcer)
        self._request_ids = RequestIds()
        self._settings = settings
        self._clock = clock
        self._keys = keys
        self._prices = prices
        #: per model, the most input tokens a prompt the provider expands can be billed
        self._input_bounds = input_bounds(settings, prices)
        #: per model, whether an OpenAI-style call may be billed cache writes it did not
        #: ask for (``PriceTable.bills_cache_writes``): only then is it held at them too
        self._unasked_writes = {
            name: prices.bills_cache_writes(route.price) for name, route in settings.models.items()
        }
        unbounded = sorted(name for name, bound in self._input_bounds.items() if not bound)
        if unbounded:
            log.warning(
                "no context window known for %s (an override price, or a model the price "
                "data has no window for): a prompt the provider expands (images, files, "
                "stored conversations) is held at its text alone; set max_input_tokens",
                ", ".join(unbounded),
            )
        #: what the Responses answers this process served leave for calls continuing them
        self._contexts = ResponseContexts()
        self._ledger = ledger
        self._transports = transports
        self._on_unpriced = on_unpriced
        #: the tasks of calls forwarded and not yet ended (``end_calls``)
        self._calls: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = self._request_ids()
        self._metrics.identified(request_id)
        path = scope["path"]
        # an Anthropic SDK whose base_url ends in /v1 calls /v1/v1/messages: told in its format
        wire = "anthropic" if path.startswith(("/v1/messages", "/v1/v1/messages")) else "openai"
        try:
            headers = header_dict(scope)
            now, mono = self._clock.now(), self._clock.monotonic()
            if path == "/v1/models" or path.startswith("/v1/models/"):
                if scope["method"] != "GET":
                    raise MethodNotAllowed(f"{path} accepts GET only", allow=("GET",))
                key = await self._authenticate(scope, headers, wire, now, mono)
                await self._models(send, key, path, request_id)
                return
            endpoint = ENDPOINTS.get(path)
            if endpoint is None:
                hint = misrouted(path) or SERVED
                raise NotFound(f"unknown endpoint {scope['method']} {path}: {hint}")
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{path} accepts POST only", allow=("POST",))
            key = await self._authenticate(scope, headers, wire, now, mono)
            body = await read_body(receive, headers, self._settings.max_body_bytes)
            payload = parse_request(body)
            if endpoint.counts:
                if await self._policies_moved():  # a key revoked on another replica
                    key = await self._authenticate(scope, headers, wire, now, mono)
                await self._count(request_id, key, endpoint, payload, body, headers, send)
                return
            call = self._admit(request_id, key, endpoint, payload, headers, now, mono, body)
            named_ticket = headers.get("x-spendgate-ticket")
            if named_ticket and self._tickets is not None:
                await self._tickets.check_header(named_ticket, key.id)
            try:
                auto_funded = False
                for _ in range(REPLANS):
                    try:
                        guarded = await self._hold(call)
                        break
                    except InsufficientFunds as short:
                        # a wallet with cost tickets asks instead of only refusing; one on
                        # ``auto`` may approve at once: then the call is planned again
                        if self._tickets is None or not await self._tickets.refused(
                            short, call.subject(), request_id, auto=not auto_funded
                        ):
                            raise
                        auto_funded = True
                    except PolicyStale as stale:
                        # a policy changed (or the counters were lost) since this process
                        # loaded its own: reload, authenticate again, plan again
                        await self._enforcer.resync(stale.seen)
                        key = await self._authenticate(scope, headers, wire, now, mono)
                        call = self._admit(
                            request_id, key, endpoint, payload, headers, now, mono, body
                        )
                else:
                    raise StateUnavailable(
                        "policies are changing faster than this call could be admitted; "
                        "retry shortly"
                    )
                await self._guarded(call, guarded, payload, headers, receive, send)
            except RedisError as exc:
                self._metrics.backend_error("redis")
                raise counters_failed(exc, "budgets and limits") from exc
        except SpendgateError as err:
            self._metrics.refused(err)
            await send_error(send, err, wire, request_id)
        except (SQLAlchemyError, OSError) as exc:
            # only a lookup this process had not cached gets here: cached keys and
            # policies keep serving through an outage, and the ledger waits in the spool
            failure = database_failure(exc, f"call {request_id}")
            if isinstance(failure, DatabaseUnavailable):
                failure = DatabaseUnavailable(
                    "the gateway's database is unavailable and this call needs it; retry shortly"
                )
            self._metrics.refused(failure)
            await send_error(send, failure, wire, request_id)

    async def _authenticate(
        self, scope: Scope, headers: Mapping[str, str], wire: str, now: datetime, mono: float
    ) -> KeyRecord:
        """The caller's key; a source address that keeps failing is refused (429) first."""
        ip = client_address(scope)
        self._throttle.check(ip, mono)
        try:
            return await self._keys.authenticate(presented_secret(headers, wire), now, mono)
        except AuthenticationFailed:
            self._throttle.failed(ip, mono)
            raise

    def _admit(
        self,
        request_id: str,
        key: KeyRecord,
        endpoint: Endpoint,
        payload: dict[str, Any],
        headers: Mapping[str, str],
        now: datetime,
        mono: float,
        body: bytes,
    ) -> Call:
        route = self._route(key, payload)
        if self._ledger.full:
            raise LedgerBacklogFull(
                "the gateway's ledger backlog is full (the database has been unavailable "
                "too long); this call could not be recorded, so it is not forwarded"
            )
        stream = bool(payload.get("stream")) and endpoint.streams
        if endpoint.kind == "response" and payload.get("background") not in (None, False):
            # the provider answers "queued" with no usage and bills the run later, read by
            # GET /v1/responses/{id}, which no gateway route meters: the call's cost could
            # not be known, held or booked, so it is refused before the provider sees it
            raise InvalidRequest(
                "background responses are not supported: their cost is known only after "
                "the call returns, so no budget or wallet could hold it; send the request "
                "without background (stream it to keep the connection busy)",
                param="background",
            )
        estimate, audio, bound, expanded = self._prompt(
            route, payload, endpoint.kind, headers, body
        )
        try:
            worst = worst_case(
                payload,
                endpoint.kind,
                estimate,
                route.default_max_tokens,
                route.provider.kind,
                cache_writes=marks_cache(payload, body)
                if endpoint.kind == "message"
                else self._unasked_writes.get(route.name, True),
                input_bound=bound,
                expanded=expanded,
                audio=audio,
            )
        except BadField as exc:
            raise InvalidRequest(str(exc), param=exc.param) from exc
        return Call(
            request_id,
            key,
            route,
            endpoint,
            request_tags(key, headers),
            stream,
            now,
            mono,
            worst,
            endpoint.kind == "response" and payload.get("store") is not False,
            price_context(payload),
        )

    def _route(self, key: KeyRecord, payload: dict[str, Any]) -> ModelRoute:
        """The route of the request's model, which the key must be allowed to use."""
        model = payload["model"]
        route = self._settings.models.get(model)
        if route is None:
            raise UnknownModel(
                f"the model {model!r} does not exist or is not served here", param="model"
            )
        if key.models and model not in key.models:
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")
        return route

    async def _policies_moved(self) -> bool:
        """Whether the policies changed on another replica since this one loaded them (a
        key revoked, rotated): then they are reloaded and the key looked up again. What
        an admission finds; a token count holds nothing, so it asks (Redis mode: one
        round trip; Redis down or in-process counters: no)."""
        before = self._enforcer.generation
        await self._enforcer.current()
        return self._enforcer.generation != before

    async def _count(
        self,
        request_id: str,
        key: KeyRecord,
        endpoint: Endpoint,
        payload: dict[str, Any],
        body: bytes,
        headers: Mapping[str, str],
        send: Send,
    ) -> None:
        """A token count, passed through to the model's provider: free there, so not
        billed, with no ledger row, and held against no budget, wallet or rate limit
        (an exhausted hard cap does not block it); the key's auth and model allowlist
        apply as on every call (with ``unlisted_models = "deny"``'s, and a pause, a
        governing ``rpm = 0`` row, refuses it), and the provider key replaces the
        virtual one."""
        route = self._route(key, payload)
        limits = (await self._enforcer.policies()).rate_limits
        self._rate_gate.screen(limits, key.id, key.team_id, route.name)
        url = upstream_url(route, endpoint)  # a 400 where the provider cannot count
        if route.upstream_model != payload["model"]:
            payload["model"] = route.upstream_model
            body = orjson.dumps(payload)
        request = UpstreamRequest(
            method="POST",
            url=url,
            headers=upstream_headers(route, endpoint, headers),
            body=body,
            stream=False,
            timeout=route.provider.timeout_seconds,
        )
        response = await self._send(route, request)
        if response.status == 401:
            raise self._provider_refused(route)
        answer = {"x-request-id": request_id, **from_upstream(response.headers)}
        answer["content-type"] = response.headers.get("content-type", "application/json")
        if response.status >= 300:  # the provider's error, passed on as on other routes
            answer.update(retry_advice(response.headers))
        answer["x-spendgate-cost-usd"] = cost_figure(0)
        self._metrics.relayed(response.status)
        await send_bytes(send, response.status, response.body, answer)

    async def _send(self, route: ModelRoute, request: UpstreamRequest) -> UpstreamResponse:
        """``request`` sent to the route's provider (in-process for the simulated one),
        its answer's latency metered."""
        transport = self._transports["simulated" if route.provider.kind == "simulated" else "http"]
        sent = self._clock.monotonic()
        response = await transport.send(request)
        self._metrics.upstream(route.provider.name, self._clock.monotonic() - sent)
        return response

    def _provider_refused(self, route: ModelRoute) -> UpstreamAuthFailed:
        """The provider refused spendgate's key, not the client's: the client is not told
        its own key is wrong, nor shown the provider's (OpenAI echoes part of it)."""
        log.warning(
            "provider %s refused spendgate's API key (HTTP 401) for model %s; "
            "check its api_key / api_key_env",
            route.provider.name,
            route.name,
        )
        return UpstreamAuthFailed(
            f"the provider of model {route.name!r} refused the gateway's credentials; "
            "the gateway's operator must fix its provider key"
        )

    def _prompt(
        self,
        route: ModelRoute,
        payload: dict[str, Any],
        kind: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, int, int, bool]:
        """The prompt's input tokens: the estimate, how much of it is audio, the most
        the provider can bill, and whether that is because it expands the prompt
        (``core.worst_case``). A text
        prompt: bytes / 4, and its text's bound. One the provider expands: bytes / 4 but
        for images' inline data, and the model's window (images some models bill past
        it included); or, continuing a stored conversation whose tokens are known, those
        plus its own estimate, and those plus its own text's bound."""
        estimate, text = len(body) // 4, text_bound(payload, kind, body)
        if not expands(payload, kind):
            return estimate, 0, text, False
        priced = None if route.price.override is not None else route.price.model
        estimate, audio, inline = prompt_estimate(payload, kind, len(body), image_estimate(priced))
        window = self._input_bounds[route.name]
        if not window:  # nothing bounds what the provider makes of it
            return estimate, audio, text, False
        if route.max_input_tokens is not None:
            # the setting bounds what the provider adds to the text the request can be
            # seen to carry (its media's inline data aside): else a picture would let
            # any amount of text through at the setting's hold
            window += max(0, text - inline // 4)
        if route.max_input_tokens is None and route.price.override is None:  # the data's
            if route.provider.kind == "anthropic" and "context-1m" in headers.get(
                "anthropic-beta", ""
            ):
                window = max(window, LONG_CONTEXT_TOKENS)  # Anthropic's 1M-token beta
            per_image = image_bound(route.price.model, 1)
            if per_image:
                window = max(window, per_image * expanding_parts(payload, kind))
        previous = continues(payload, kind)
        stored = None if previous is None else self._contexts.tokens(route.provider.name, previous)
        if stored is None:
            return min(estimate, window), audio, window, True
        bound = min(window, stored + text)
        return min(stored + estimate, bound), audio, bound, True

    async def _hold(self, call: Call) -> Guarded:
        """Rate limits, then budgets and wallets, for the call's worst case: in Redis
        mode one round trip (``CallGuard``), which also finds a stale policy snapshot.
        A price unknown (None) is never held as $0: a hard cap, a wallet or a spend limit
        refuses the call; observation-only budgets and other limits let it through."""
        _, worst = self._worst(call, hold=True)
        policies = await self._enforcer.policies()
        try:
            return await self._guard.admit(
                call.request_id, call.subject(), call.worst.usage.total_tokens, worst, policies
            )
        except (BudgetExceeded, InsufficientFunds, RateLimited) as refused:
            bound = call.worst.input_bound
            money = not isinstance(refused, RateLimited) or refused.denial.check.kind == "spend"
            if money and call.worst.expanded and bound is not None:
                refused.message += self._why_held(call, bound)
            searches = call.worst.usage.web_searches
            if money and searches:
                refused.message += (
                    f"; it is held for {searches:,} web searches, billed per search (the "
                    "request's max_uses / max_tool_calls, else "
                    f"{SEARCHES_HELD}: set one to hold fewer)"
                )
            raise

    def _why_held(self, call: Call, bound: int) -> str:
        """The refusal's word on a hold raised to ``bound`` input tokens."""
        if bound < (self._input_bounds.get(call.route.name) or 0):
            return (
                f"; the provider reads this prompt after the stored conversation it "
                f"continues (previous_response_id), so the call is held at {bound:,} input "
                f"tokens: that conversation's as this gateway saw them, and this request's"
            )
        return (
            "; the provider expands this prompt (an image, a file, audio, a stored "
            f"conversation or a server-side tool), so the call is held at {bound:,} input "
            f"tokens, the most {call.route.name} can bill it (its context window, or what "
            "its images can be billed past it; the model's max_input_tokens setting holds "
            "less)"
        )

    def _worst(
        self, call: Call, *also: TokenUsage, hold: bool = False
    ) -> tuple[TokenUsage, int | None]:
        """The dearest of the call's worst case, its all-cache-writes variant and
        ``also`` (usage seen so far), with its price: what a call that timed out after
        reaching the provider is billed; ``hold``: with the prompt a provider expands
        counted at the model's bound (``WorstCase.held``), what admission holds. A price
        unknown (None) is never the cheaper one."""
        first, cached = call.worst.held() if hold else (call.worst.usage, call.worst.cached)
        dearest, most = first, None
        for n, usage in enumerate((first, cached, *also)):
            if usage is None:
                continue
            priced = self._prices.price(call.route.price, usage, call.started_at, call.context)
            cost = priced.cost_nanos
            if cost is None:
                return usage, None
            if n == 0 or most is None or cost > most:
                dearest, most = usage, cost
        return dearest, most

    async def _guarded(
        self,
        call: Call,
        guarded: Guarded,
        payload: dict[str, Any],
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        """The call, with its holds; given back if the call never settles (an error
        before forwarding, a crash, a cancellation). Settling is one more round trip."""
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            await self._forward(call, guarded, payload, headers, receive, send)
        finally:
            await self._guard.release(guarded)
            self._calls.discard(task)

    async def end_calls(self, grace_seconds: float) -> None:
        """At shutdown, before the ledger closes: wait for the calls still running to end.
        The server cut those that outlived its drain (``shutdown_drain_seconds``), and a
        cut call books what the provider produced as it ends (``_cut``); one still
        running after ``grace_seconds`` is cut here."""
        await end_tasks(list(self._calls), grace_seconds, what="call")

    async def _cut(self, call: Call, guarded: Guarded) -> ShuttingDown:
        """Book a call the server cut (shutdown) before the provider's answer came: the
        provider had the request and bills it, so it is billed at its worst case, as a
        timeout is (``incomplete``, estimated; $0 with ``bill_upstream_timeouts`` off)."""
        billing = self._settings.bill_upstream_timeouts
        usage = self._worst(call)[0] if billing else None
        # not billed: $0 and not on an estimate, as an unbilled timeout is
        cost, remaining = await self._book(call, guarded, 503, "incomplete", usage, billing)
        billed = {"x-spendgate-cost-usd": cost_figure(cost)}
        tell_remaining(billed, remaining)
        how = (
            f"the provider bills it, so it was billed {cost_figure(cost)} USD (usage estimated)"
            if billing
            else "not billed (bill_upstream_timeouts is off)"
        )
        return ShuttingDown(
            "the gateway is shutting down and cut this call before the provider's answer "
            f"came; {how}; retry",
            billed=billed,
        )

    def _upstream_request(
        self, call: Call, payload: dict[str, Any], headers: Mapping[str, str]
    ) -> tuple[UpstreamRequest, bool]:
        """The request to send, and whether the client itself asked for stream usage.

        The provider gets ``payload`` serialised again, never the client's bytes: a key
        given twice (``{"max_tokens": 100000, …, "max_tokens": 10}``) was held and priced
        at its last value, as the gateway parsed it, and a provider reading the first
        would have run another request than the one held (a cap passed by the
        difference). Once serialised, what is sent is what was held."""
        route, endpoint = call.route, call.endpoint
        if route.upstream_model != payload["model"]:
            payload["model"] = route.upstream_model
        if call.worst.send_cap is not None:  # the output cap the worst case assumed
            field, cap = call.worst.send_cap
            for other in CAP_FIELDS[endpoint.kind]:  # the one cap the provider is sent
                payload.pop(other, None)
            payload[field] = cap
        client_wants_usage = True
        if call.stream and endpoint.kind in ("chat", "completion"):
            options = payload.get("stream_options")
            client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not client_wants_usage:
                payload["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
        request = UpstreamRequest(
            method="POST",
            url=upstream_url(route, endpoint),
            headers=upstream_headers(route, endpoint, headers),
            body=orjson.dumps(payload),
            stream=call.stream,
            timeout=route.provider.timeout_seconds,
        )
        return request, client_wants_usage

    async def _forward(
        self,
        call: Call,
        guarded: Guarded,
        payload: dict[str, Any],
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        request, client_wants_usage = self._upstream_request(call, payload, headers)
        try:
            response = await self._send(call.route, request)
        except asyncio.CancelledError:
            # the server's drain ran out (SIGTERM), or whoever runs the call cancelled it
            # (a deadline): booked and told, not dropped unbilled while the provider goes
            # on with it; the cancellation goes on (swallowed, a deadline never fires)
            cut = await self._cut(call, guarded)
            self._metrics.refused(cut)
            await send_error(send, cut, call.endpoint.wire, call.request_id)
            raise
        except UpstreamTimeout as err:
            raise await self._timed_out(call, guarded, err) from err
        except SpendgateError as err:
            await self._book(call, guarded, err.status, "upstream_error", None)
            raise
        if response.status == 401:
            refused = self._provider_refused(call.route)
            await self._book(call, guarded, refused.status, "upstream_error", None)
            raise refused
        if response.status >= 300:
            await self._relay_error(call, guarded, response, send)
        elif call.stream:
            await self._relay_stream(call, guarded, response, client_wants_usage, receive, send)
        else:
            await self._relay_whole(call, guarded, response, send)

    def _bills(self, err: SpendgateError) -> bool:
        """Whether ``err`` is a timeout the provider bills: the whole request reached it
        (it generates and bills whether or not its answer arrives), and the operator
        bills such timeouts (``[gateway] bill_upstream_timeouts``)."""
        return (
            isinstance(err, UpstreamTimeout)
            and err.billable
            and self._settings.bill_upstream_timeouts
        )

    async def _timed_out(
        self, call: Call, guarded: Guarded, err: UpstreamTimeout
    ) -> UpstreamTimeout:
        """Book a call that timed out before any answer, and the 504 that says what was
        booked: its worst case (estimated usage) when the provider had the request (it
        bills it), else $0."""
        if not self._bills(err):
            await self._book(call, guarded, err.status, "timeout", None)
            # not billable: nothing reached the provider, or it was answering with an
            # error (the transport's message says which)
            why = "" if err.billable else "the provider does not bill it, so it is "
            return UpstreamTimeout(
                f"{err.message}; {why}not billed",
                billable=err.billable,
                billed={"x-spendgate-cost-usd": cost_figure(0)},
            )
        usage, _ = self._worst(call)
        cost, remaining = await self._book(call, guarded, err.status, "timeout", usage, True)
        billed = {"x-spendgate-cost-usd": cost_figure(cost)}
        tell_remaining(billed, remaining)
        searches = usage.web_searches
        also = f", and {searches:,} web searches" if searches else ""
        return UpstreamTimeout(
            f"{err.message}; the provider had the request and bills it whether or not its "
            f"answer arrives, so this call was billed at its worst case, "
            f"{cost_figure(cost)} USD (usage estimated: the prompt, and the output cap{also})",
            billed=billed,
        )

    def _base_headers(
        self, call: Call, guarded: Guarded, upstream: Mapping[str, str]
    ) -> dict[str, str]:
        return {"x-request-id": call.request_id, **guarded.rated.headers, **from_upstream(upstream)}

    async def _relay_error(
        self, call: Call, guarded: Guarded, response: UpstreamResponse, send: Send
    ) -> None:
        """Provider errors pass through unchanged, with their retry advice, and are not
        billed."""
        headers = self._base_headers(call, guarded, response.headers)
        headers["content-type"] = response.headers.get("content-type", "application/json")
        headers.update(retry_advice(response.headers))
        headers["x-spendgate-cost-usd"] = cost_figure(0)
        await self._book(call, guarded, response.status, "upstream_error", None)
        # nothing was spent: what was left when it was admitted is what is left
        tell_remaining(headers, guarded.admission.remaining_seen)
        await send_bytes(send, response.status, response.body, headers)

    async def _relay_whole(
        self, call: Call, guarded: Guarded, response: UpstreamResponse, send: Send
    ) -> None:
        usage, answer, reported = usage_from_body(call.endpoint.kind, response.body)
        estimated = usage is None
        if usage is not None and answer is not None:
            self._remember(call, answer, usage)
        if usage is None:
            usage = TokenUsage(
                input_tokens=call.worst.usage.input_tokens, output_tokens=len(response.body) // 4
            )
        cost, remaining = await self._book(
            call, guarded, response.status, "ok", usage, estimated, reported
        )
        headers = self._base_headers(call, guarded, response.headers)
        headers["content-type"] = response.headers.get("content-type", "application/json")
        headers["x-spendgate-cost-usd"] = cost_figure(cost)
        tell_remaining(headers, remaining)
        await send_bytes(send, response.status, response.body, headers)

    async def _relay_stream(
        self,
        call: Call,
        guarded: Guarded,
        response: UpstreamResponse,
        client_wants_usage: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        """Forward events as they come; if the client leaves, keep reading so the bill is
        the provider's own usage figure, not a guess. The headers went out before the
        cost was known: the stream tells it in an SSE comment once booked
        (``wire.cost_comment``), before its terminal event."""
        meter = StreamMeter(call.endpoint.kind, strip_usage_chunk=not client_wants_usage)
        headers = self._base_headers(call, guarded, response.headers)
        headers["content-type"] = response.headers.get("content-type", "text/event-stream")
        headers["cache-control"] = "no-cache"
        # a stream's cost is known only at its end, after the headers went out: what was
        # left when it was admitted (its own cost not yet taken off)
        tell_remaining(headers, guarded.admission.remaining_seen)
        disconnect = asyncio.ensure_future(receive())
        booked = False
        try:
            await start_stream(send, headers)
            async for chunk in response.chunks:
                out = meter.feed(chunk)
                if (meter.done or meter.failed) and not booked:
                    # settled and on disk before the terminal event ([DONE], message_stop,
                    # response.completed, the provider's error) goes out: a client that saw
                    # the end of its stream has its spend recorded, whatever happens to this
                    # process (and one that leaves on an error is not "client_cancelled");
                    # booked once, even if cut meanwhile (``_book`` commits all the same)
                    booked = True
                    told = await self._book_stream(call, guarded, meter, disconnect, meter.status)
                    out = out[: meter.cost_at] + told + out[meter.cost_at :]
                if out and not disconnect.done():
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = meter.finish()
            if not booked:
                booked = True
                told = await self._book_stream(call, guarded, meter, disconnect, meter.status)
                tail = told + tail
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except (SpendgateError, asyncio.CancelledError) as caught:
            # cancelled (the server's drain ran out at SIGTERM, or a deadline): the stream
            # ends as a broken one does, billed for what the provider produced and the
            # client told so, then the cancellation goes on
            err = (
                caught
                if isinstance(caught, SpendgateError)
                else ShuttingDown("the gateway is shutting down and cut this stream; retry")
            )
            told = b""
            if not booked:
                # a stall (read timeout) before the provider's final usage is billed as a
                # timeout before any answer is: the provider may still be generating (or
                # reasoning, which streams nothing), and bills it
                stalled = self._bills(err) and not meter.final
                status = "timeout" if stalled else "incomplete"
                booked = True
                told = await self._book_stream(
                    call, guarded, meter, disconnect, status, worst=stalled
                )
            # a stream that broke before its end says so: the client must not take the
            # part it got for the whole answer
            ended = meter.done or meter.failed
            tail = b"" if ended else stream_error_event(err, call.endpoint.wire)
            await send({"type": "http.response.body", "body": told + tail, "more_body": False})
            if caught is not err:
                raise  # booked and told; the cancellation goes on to whoever asked for it
        finally:
            await response.close()
            if not booked:
                booked = True
                await self._book_stream(call, guarded, meter, disconnect, "incomplete")
            if not disconnect.done():
                disconnect.cancel()

    def _remember(self, call: Call, answer: str, usage: TokenUsage) -> None:
        """Keep what a stored Responses answer leaves for a call continuing it (its
        provider's own figure, not one clamped as implausible)."""
        if call.stored and not usage.implausible:
            self._contexts.remember(call.route.provider.name, answer, usage)

    async def _book_stream(
        self,
        call: Call,
        guarded: Guarded,
        meter: StreamMeter,
        disconnect: asyncio.Future[Any],
        status: str,
        *,
        worst: bool = False,
    ) -> bytes:
        """Book the stream from the provider's usage (or, without its final figure, an
        estimate; ``worst``: its worst case, or what the provider reported so far if
        dearer); a client that left is recorded as ``client_cancelled``. Returns the
        comment that tells the client what was booked (nothing if it left)."""
        left = disconnect.done()
        if left:
            status = "client_cancelled"
        usage, estimated = meter.billed(call.worst.usage.input_tokens)
        if meter.response_id is not None and not estimated:
            self._remember(call, meter.response_id, usage)
        if worst:
            usage, _ = self._worst(call, usage)
        cost, _ = await self._book(call, guarded, 200, status, usage, estimated, meter.reported)
        return b"" if left else cost_comment(cost, status, estimated)

    async def _book(
        self,
        call: Call,
        guarded: Guarded,
        http_status: int,
        status: str,
        usage: TokenUsage | None,
        estimated: bool = False,
        reported: PriceContextKey = (),
    ) -> tuple[int | None, int | None]:
        """Price the call (at the tier the provider ``reported``, where it reported one
        the prices know), settle its holds (``usage`` None: not billed, holds given
        back) and put its ledger row on disk together with the events this produced (a
        threshold the settle crossed, an unknown price): returns (cost, the tightest
        budget's remaining nanos). Called before the call's final bytes go out."""
        events: list[PendingEvent] = []
        remaining = None
        uncounted = False
        with capture_events(events):
            entry = self._record(call, http_status, status, usage, estimated, reported)
            self._metrics.booked(entry)
            try:
                if usage is None:
                    await self._guard.unbilled(guarded)
                else:
                    remaining = await self._guard.settle(
                        guarded, usage.total_tokens, entry.cost_nanos or 0
                    )
            except RedisError as exc:
                # the provider answered (and may bill): the client gets its answer and
                # the ledger its row; the holds run out unrenewed, and the counters
                # take the spend from the ledger (seed, reconciliation)
                log.error("could not settle %s in the shared counters: %s", call.request_id, exc)
                self._metrics.backend_error("redis")
                self._guard.abandon(guarded)
                uncounted = True
            finally:
                if uncounted or guarded.uncounted:  # the counters take it from the ledger
                    entry = entry._replace(uncounted=True)
                await self._ledger.commit(entry, events)
        return entry.cost_nanos, remaining

    def _record(
        self,
        call: Call,
        http_status: int,
        status: str,
        usage: TokenUsage | None,
        estimated: bool = False,
        reported: PriceContextKey = (),
    ) -> LedgerEntry:
        """Price the call and build its ledger row."""
        finished = self._clock.now()
        cost: int | None
        tier = None
        if usage is None:
            usage, cost, unknown = TokenUsage(), 0, False
        else:
            priced = self._prices.price(
                call.route.price, usage, call.started_at, call.context, reported
            )
            cost, unknown, tier = priced.cost_nanos, priced.cost_nanos is None, priced.context
            if unknown:
                self._on_unpriced(call, usage)
            if usage.implausible and self._on_implausible is not None:
                self._on_implausible(call, usage)
        key = call.key
        return LedgerEntry(
            request_id=call.request_id,
            org_id=key.org_id,
            team_id=key.team_id,
            user_id=key.user_id,
            agent_id=key.agent_id,
            key_id=key.id,
            tags=call.tags,
            provider=call.route.provider.name,
            model=call.route.name,
            upstream_model=call.route.upstream_model,
            kind=call.endpoint.kind,
            stream=call.stream,
            status=status,
            http_status=http_status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_nanos=cost,
            price_unknown=unknown,
            usage_estimated=estimated,
            latency_ms=int((self._clock.monotonic() - call.started_mono) * 1000),
            started_at=call.started_at,
            finished_at=finished,
            usage_implausible=usage.implausible,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            web_searches=usage.web_searches,
            price_context=tier,
        )

    async def _models(self, send: Send, key: KeyRecord, path: str, request_id: str) -> None:
        names = [m for m in self._settings.models if not key.models or m in key.models]
        headers = {"content-type": "application/json", "x-request-id": request_id}
        if path == "/v1/models":
            await send_bytes(send, 200, orjson.dumps(simulated.models_list(names)), headers)
            return
        wanted = path.removeprefix("/v1/models/")
        if wanted not in names:
            raise UnknownModel(f"the model {wanted!r} does not exist", param="model")
        await send_bytes(
            send, 200, orjson.dumps(simulated.models_list([wanted])["data"][0]), headers
        )
