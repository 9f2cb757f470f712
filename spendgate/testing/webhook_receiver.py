"""A webhook receiver for tests: a raw ASGI app that verifies Standard Webhooks
signatures with the ``standardwebhooks`` library and records what it got.

Serve it with :func:`spendgate.testing.fake_upstream.serve_in_thread`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from spendgate.proxy.wire import Receive, Scope, Send

TOLERANCE = timedelta(minutes=5)


class ClockedWebhook(Webhook):
    """The library's verifier with "now" taken from a clock (a test's frozen clock),
    so deliveries retried hours later in frozen time still verify."""

    def __init__(self, secret: str, now: Callable[[], datetime]) -> None:
        super().__init__(secret)
        self._now = now

    def _Webhook__verify_timestamp(self, timestamp_header: str) -> datetime:
        try:
            at = datetime.fromtimestamp(float(timestamp_header), tz=UTC)
        except ValueError as exc:
            raise WebhookVerificationError("Invalid Signature Headers") from exc
        if abs(at - self._now()) > TOLERANCE:
            raise WebhookVerificationError("Message timestamp out of tolerance")
        return at


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    verified: bool
    error: str | None
    #: the request path the delivery was posted to
    path: str = ""
    #: the status this receiver answered with
    answered: int = 200
    #: when it arrived (``time.monotonic()``, before the answer was sent)
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers 200 to requests signed with one of ``secrets`` (any request if none), 401
    otherwise; ``status`` forces an answer (e.g. 503 to play a failing receiver), and so
    does ``refuse``: 503 to the next ``refuse`` requests, then the usual answers again (a
    receiver down until deliveries found it so, however late they come)."""

    secrets: list[str] = field(default_factory=list)
    now: Callable[[], datetime] | None = None
    status: int | None = None
    received: list[Received] = field(default_factory=list)
    refuse: int = 0

    def verifier(self, secret: str) -> Webhook:
        return Webhook(secret) if self.now is None else ClockedWebhook(secret, self.now)

    def check(self, body: bytes, headers: dict[str, str]) -> str | None:
        """``None`` when some secret verifies, else the last error."""
        error = "no secret"
        for secret in self.secrets:
            try:
                self.verifier(secret).verify(body, headers)
                return None
            except WebhookVerificationError as exc:
                error = str(exc)
        return error

    @property
    def verified(self) -> list[Received]:
        return [r for r in self.received if r.verified]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        error = self.check(body, headers) if self.secrets else None
        status = self.status
        if status is None and self.refuse > 0:
            self.refuse -= 1
            status = 503
        status = status or (200 if error is None else 401)
        self.received.append(Received(body, headers, error is None, error, scope["path"], status))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": json.dumps({"ok": error is None, "error": error}).encode(),
            }
        )
