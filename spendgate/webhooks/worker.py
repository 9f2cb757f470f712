"""The delivery worker: lease due deliveries, sign, POST, log the attempt, back off.

State lives in the database, so a restarted (or another) worker picks up where one left
off; time comes from the clock, so tests drive it with a ``FrozenClock`` and real local
receivers. The worker owns its HTTP client: every connection it opens goes to an address
vetted as it connects (``vetted_transport``), so a delivery cannot be rebound into a
private network between the check and the request. Close it with :meth:`aclose`.

URLs that are credentials (Slack) are decrypted just before the request and kept out of
logs and of the delivery log: ``httpx`` logs each request's URL, so the worker installs
``secret_urls.REDACTOR`` on that logger and hides the URL while it posts to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate import __version__
from spendgate.core.clock import Clock
from spendgate.stopping import Stop
from spendgate.store.database import database_unreachable
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.formats import encode, render
from spendgate.webhooks.outbox import AttemptResult, Claim, claim_due, record_attempt
from spendgate.webhooks.secret_urls import REDACTOR, is_secret_url, mask_url
from spendgate.webhooks.secrets_box import SecretBox, SecretUnreadable
from spendgate.webhooks.signing import signed_headers, signing_secrets
from spendgate.webhooks.store import WebhookStore
from spendgate.webhooks.targets import Resolver, TargetRefused, parse_target, system_resolver
from spendgate.webhooks.vetted_transport import VettedTransport

log = logging.getLogger("spendgate.webhooks")
if REDACTOR not in logging.getLogger("httpx").filters:
    logging.getLogger("httpx").addFilter(REDACTOR)

EXCERPT_BYTES = 500
#: seconds between tries to record an attempt while the database is unreachable
RECORD_RETRY_FIRST, RECORD_RETRY_MOST = 0.1, 2.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


#: how long one delivery attempt may take
DEFAULT_TIMEOUT_SECONDS = 15.0


def default_lease(timeout_seconds: float) -> timedelta:
    """How long a claimed delivery stays with its worker: two attempts' timeouts and a
    margin. A worker that dies holding one leaves it to be sent again after this."""
    return timedelta(seconds=timeout_seconds * 2 + 30)


class DeliveryWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        box: SecretBox,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        console_url: str = "http://127.0.0.1:4100",
        allow_private: bool = False,
        resolve: Resolver = system_resolver,
        worker_id: str | None = None,
        batch_size: int = 20,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        lease: timedelta | None = None,
        poll_seconds: float = 1.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._clock = clock
        #: ``transport`` replaces the vetted connections (tests: ``httpx.MockTransport``)
        self._http = httpx.AsyncClient(
            transport=transport or VettedTransport(allow_private=allow_private, resolve=resolve),
            trust_env=False,
        )
        self._store = WebhookStore(engine, box)
        self._console_url = console_url
        self.worker_id = worker_id or default_worker_id()
        self._round = asyncio.Lock()
        self._batch_size = batch_size
        self._timeout = timeout_seconds
        #: a lease outlives the longest attempt, so no delivery is ever sent twice at once
        self._lease = lease or default_lease(timeout_seconds)
        if self._lease.total_seconds() <= timeout_seconds:
            raise ValueError("the lease must outlast the HTTP timeout")
        self._poll = poll_seconds
        self._rand = rand
        #: told each attempt's endpoint kind and outcome (the gateway's metrics)
        self.on_attempt: Callable[[str, str], None] | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> DeliveryWorker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run_once(self) -> int:
        """Attempt every delivery due now (up to the batch size); how many were attempted.
        A worker's rounds never overlap: a round asked for while one is running (the
        gateway's own loop, or an admin action) starts once that one has ended, so when
        it returns, every attempt begun before it has been made and logged."""
        async with self._round:
            claims = await claim_due(
                self._engine,
                self._clock.now(),
                worker_id=self.worker_id,
                lease=self._lease,
                limit=self._batch_size,
            )
            if claims:
                await asyncio.gather(*(self._attempt(c) for c in claims))
            return len(claims)

    async def run_forever(self, stop: Stop | None = None) -> None:
        """Poll until ``stop`` is set (after the round in progress) or cancelled; a
        failing round is logged and the loop goes on."""
        stop = stop or Stop()
        while not stop.is_set():
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # outermost layer of a background loop: log and keep going
                log.exception("webhook delivery round failed")
                done = 0
            await stop.pause(0 if done >= self._batch_size else self._poll)

    async def _attempt(self, claim: Claim) -> str:
        started_at = self._clock.now()
        try:
            result = await self._send(claim)
        except (TargetRefused, SecretUnreadable) as exc:
            if isinstance(exc, SecretUnreadable):  # every delivery there fails: say so loudly
                log.error(
                    "webhook endpoint %s: %s (SPENDGATE_SECRET_KEY or the master key changed)",
                    claim.endpoint["id"],
                    exc,
                )
            result = AttemptResult(ok=False, response_code=None, latency_ms=0, error=str(exc)[:500])
        outcome = await self._record(claim, result, started_at)
        if self.on_attempt is not None:
            self.on_attempt(claim.endpoint["kind"], outcome)
        log.info(
            "webhook delivery %s to %s: %s (%s)",
            claim.delivery["id"],
            claim.endpoint["id"],
            outcome,
            result.response_code or result.error,
        )
        return outcome

    async def _record(self, claim: Claim, result: AttemptResult, started_at: datetime) -> str:
        """``record_attempt``, again while the database is unreachable and the lease is
        still ours: the receiver's answer is known only here, and a write given up on
        leaves the delivery pending, to be sent again when the lease expires (a receiver
        that accepted it gets it twice). Only a worker that dies loses an answer."""
        rand, pause = self._rand(), RECORD_RETRY_FIRST
        while True:
            try:
                return await record_attempt(
                    self._engine, claim, result, started_at, self._clock.now(), rand
                )
            except Exception as exc:
                lease_until = claim.delivery["lease_until"]
                if not database_unreachable(exc) or self._clock.now() >= lease_until:
                    raise
                log.warning(
                    "webhook delivery %s: recording its attempt failed, database "
                    "unavailable (retrying while the lease lasts): %s",
                    claim.delivery["id"],
                    exc,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECORD_RETRY_MOST)

    def _request(self, claim: Claim) -> tuple[bytes, dict[str, str]]:
        endpoint, delivery = claim.endpoint, claim.delivery
        event = Event.from_envelope(delivery["payload"])
        body = encode(
            render(
                endpoint["kind"],
                event,
                action=delivery["action"],
                config=self._store.config_of(endpoint),
                console_url=self._console_url,
            )
        )
        current, previous = self._store.secrets_of(endpoint)
        now = self._clock.now()
        secrets = signing_secrets(current, previous, endpoint["previous_secret_until"], now)
        headers = {
            "content-type": "application/json",
            "user-agent": f"spendgate-webhooks/{__version__}",
            **signed_headers(delivery["message_id"], now, body, secrets),
        }
        return body.encode(), headers

    async def _send(self, claim: Claim) -> AttemptResult:
        url = self._store.url_of(claim.endpoint)
        secret_url = is_secret_url(claim.endpoint["kind"], url)
        hidden = _spellings(url) if secret_url else ()
        parse_target(url)  # http(s) with a host; its addresses are vetted as it connects
        content, headers = self._request(claim)
        start = self._clock.monotonic()
        resp: httpx.Response | None = None
        excerpt = b""
        try:
            # the timeout bounds the whole attempt, not only each read (httpx's): a
            # receiver answering a byte at a time must not outlast the lease, after which
            # another worker sends the delivery again
            async with asyncio.timeout(self._timeout):
                with REDACTOR.hiding(*hidden):
                    async with self._http.stream(
                        "POST",
                        url,
                        content=content,
                        headers=headers,
                        timeout=self._timeout,
                        follow_redirects=False,
                    ) as resp:
                        async for chunk in resp.aiter_bytes():
                            excerpt += chunk
                            if len(excerpt) >= EXCERPT_BYTES:
                                break
        except TimeoutError:
            if resp is None:  # no status in time; one that came stands, whatever its body
                return AttemptResult(
                    ok=False,
                    response_code=None,
                    latency_ms=self._elapsed_ms(start),
                    error=f"no answer within the timeout ({self._timeout:g} s)",
                )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"
            for spelling in hidden:
                error = error.replace(spelling, mask_url(spelling))
            return AttemptResult(
                ok=False, response_code=None, latency_ms=self._elapsed_ms(start), error=error[:500]
            )
        ok = 200 <= resp.status_code < 300
        return AttemptResult(
            ok=ok,
            response_code=resp.status_code,
            latency_ms=self._elapsed_ms(start),
            error=None if ok else f"HTTP {resp.status_code}",
            response_excerpt=excerpt[:EXCERPT_BYTES].decode("utf-8", "replace") or None,
        )

    def _elapsed_ms(self, start: float) -> int:
        return max(0, round((self._clock.monotonic() - start) * 1000))


def _spellings(url: str) -> tuple[str, ...]:
    """``url`` as given and as httpx prints it (normalised), longest first."""
    try:
        normalised = str(httpx.URL(url))
    except (httpx.InvalidURL, ValueError):
        return (url,)
    return tuple(sorted({url, normalised}, key=len, reverse=True))
