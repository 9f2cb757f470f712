"""One exception tree for everything spendgate refuses or fails at.

    SpendgateError                 status  code
    ├── InvalidRequest             400     invalid_request_error
    ├── AuthenticationFailed       401     invalid_api_key
    ├── PermissionDenied           403     permission_denied
    ├── NotFound                   404     not_found
    │   └── UnknownModel           404     model_not_found
    ├── MethodNotAllowed           405     method_not_allowed
    ├── Conflict                   409     conflict
    ├── InsufficientFunds          402     insufficient_funds
    ├── PayloadTooLarge            413     request_too_large
    ├── BudgetExceeded             429     budget_exceeded
    ├── TooManyAuthFailures        429     too_many_auth_failures
    ├── ValidationFailed           422     validation_error
    ├── UpstreamUnavailable        502     upstream_unavailable
    │   └── UpstreamAuthFailed     502     upstream_auth_failed
    ├── StateUnavailable           503     state_unavailable
    │   ├── DatabaseUnavailable    503     database_unavailable
    │   ├── LedgerBacklogFull      503     ledger_backlog_full
    │   └── ShuttingDown           503     shutting_down
    ├── AuditUnavailable           503     audit_unavailable
    └── UpstreamTimeout            504     upstream_timeout

``NotRetryable`` (under ``UpstreamAuthFailed`` and a spend limit's refusal of a model
with no known price) adds ``x-should-retry: false`` to a refusal no retry can lift.

Each carries its HTTP status and a stable machine code; the route that catches it
renders it in its own wire format (OpenAI, Anthropic or admin JSON). Driver and
upstream errors are translated into this tree at the boundary with ``raise ... from``.
"""

from __future__ import annotations

from typing import Any


class SpendgateError(Exception):
    status: int = 500
    code: str = "internal_error"
    #: OpenAI-style ``error.type``
    kind: str = "api_error"
    #: Anthropic-style ``error.type``
    anthropic_kind: str = "api_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for (e.g. ``Retry-After``)."""
        return {}

    def extra(self) -> dict[str, Any]:
        """Extra fields of the error object in the body (e.g. a cost ticket)."""
        return {}


class InvalidRequest(SpendgateError):
    status = 400
    code = "invalid_request_error"
    kind = "invalid_request_error"
    anthropic_kind = "invalid_request_error"


class AuthenticationFailed(SpendgateError):
    status = 401
    code = "invalid_api_key"
    kind = "invalid_request_error"
    anthropic_kind = "authentication_error"


class PermissionDenied(SpendgateError):
    status = 403
    code = "permission_denied"
    kind = "invalid_request_error"
    anthropic_kind = "permission_error"


class NotFound(SpendgateError):
    status = 404
    code = "not_found"
    kind = "invalid_request_error"
    anthropic_kind = "not_found_error"


class UnknownModel(NotFound):
    code = "model_not_found"


class MethodNotAllowed(SpendgateError):
    """A known endpoint called with a method it does not serve; ``Allow`` lists those
    it does."""

    status = 405
    code = "method_not_allowed"
    kind = "invalid_request_error"
    anthropic_kind = "invalid_request_error"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allow)}


class Conflict(SpendgateError):
    status = 409
    code = "conflict"
    kind = "invalid_request_error"
    anthropic_kind = "invalid_request_error"


class InsufficientFunds(SpendgateError):
    """A wallet (or a cost ticket's grant) cannot fund the call. With cost tickets on,
    the ticket layer fills in ``ticket_id``/``ticket_url``/``ticket_status``: they go out
    in the body (``error.ticket``) and as ``x-spendgate-ticket-*`` headers."""

    status = 402
    code = "insufficient_funds"
    kind = "insufficient_quota"
    anthropic_kind = "billing_error"

    def __init__(
        self,
        message: str,
        *,
        wallet_id: str | None = None,
        shortfall_nanos: int = 0,
        ticket_id: str | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.wallet_id = wallet_id
        #: how much more the call would have needed (its worst case minus what is free)
        self.shortfall_nanos = shortfall_nanos
        self.ticket_id = ticket_id
        self.ticket: dict[str, str] | None = None
        #: False when no top-up can fund it (its price is unknown): ``x-should-retry: false``
        self.retryable = retryable

    def extra(self) -> dict[str, Any]:
        return {} if self.ticket is None else {"ticket": self.ticket}

    def headers(self) -> dict[str, str]:
        if self.ticket is None:
            return {} if self.retryable else {"x-should-retry": "false"}
        return {
            "x-spendgate-ticket-id": self.ticket["id"],
            "x-spendgate-ticket-status": self.ticket["status"],
            "x-spendgate-ticket-url": self.ticket["url"],
            "x-spendgate-missing-usd": self.ticket["missing_usd"],
        }


class BudgetExceeded(SpendgateError):
    status = 429
    code = "budget_exceeded"
    kind = "budget_exceeded"
    anthropic_kind = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        budget_id: str,
        resets_at: str | None,
        retry_after: int | None,
        retryable: bool = True,
        remaining_usd: str | None = None,
    ) -> None:
        super().__init__(message)
        self.budget_id = budget_id
        #: what is left of the refusing budget's hard cap (its spend taken off; what calls
        #: in flight hold is not spent), as ``x-spendgate-budget-remaining-usd``
        self.remaining_usd = remaining_usd
        #: None (with ``retry_after``) when not even the next period lifts the refusal
        self.resets_at = resets_at
        self.retry_after = retry_after
        #: False when only the next period (or an admin) can make room: the SDKs, which
        #: retry every 429, are told not to (``x-should-retry: false``)
        self.retryable = retryable and retry_after is not None

    def headers(self) -> dict[str, str]:
        headers = {"x-spendgate-budget-id": self.budget_id}
        if self.remaining_usd is not None:
            headers["x-spendgate-budget-remaining-usd"] = self.remaining_usd
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, self.retry_after))
        if self.resets_at is not None:
            headers["x-spendgate-budget-resets-at"] = self.resets_at
        if not self.retryable:
            headers["x-should-retry"] = "false"
        return headers


class TooManyAuthFailures(SpendgateError):
    """This source address failed authentication too often; every attempt waits it out."""

    status = 429
    code = "too_many_auth_failures"
    kind = "rate_limit_exceeded"
    anthropic_kind = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, self.retry_after))}


class PayloadTooLarge(SpendgateError):
    status = 413
    code = "request_too_large"
    kind = "invalid_request_error"
    anthropic_kind = "request_too_large"


class ValidationFailed(SpendgateError):
    status = 422
    code = "validation_error"
    kind = "invalid_request_error"
    anthropic_kind = "invalid_request_error"


class UpstreamUnavailable(SpendgateError):
    status = 502
    code = "upstream_unavailable"
    kind = "api_error"
    anthropic_kind = "api_error"


class NotRetryable(SpendgateError):
    """A refusal no retry can lift: the SDKs, which retry every 429 and 5xx, are told
    not to (``x-should-retry: false``)."""

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class UpstreamAuthFailed(NotRetryable, UpstreamUnavailable):
    """The provider refused spendgate's own provider key (its 401): nothing the client
    can fix, and its message may show part of that key, so it is not passed on."""

    code = "upstream_auth_failed"


class StateUnavailable(SpendgateError):
    """The shared counters (Redis) cannot be reached: refuse rather than overspend."""

    status = 503
    code = "state_unavailable"
    kind = "api_error"
    anthropic_kind = "overloaded_error"

    def headers(self) -> dict[str, str]:
        return {"retry-after": "5"}


class DatabaseUnavailable(StateUnavailable):
    """The database cannot be reached and this call needs it (a key or budget this
    process has not cached): refuse it rather than serve it unchecked."""

    code = "database_unavailable"


class LedgerBacklogFull(StateUnavailable):
    """The ledger spool holds as much unwritten spend as it is allowed to: a call now
    could not be recorded durably, so it is refused before it costs anything."""

    code = "ledger_backlog_full"


class ShuttingDown(StateUnavailable):
    """The gateway is shutting down and cut this call, still running after the drain
    (``shutdown_drain_seconds``); a retry goes to another replica. ``billed``: the headers
    that tell the client what the gateway booked (the provider bills what it produced)."""

    code = "shutting_down"

    def __init__(self, message: str, *, billed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.billed = billed or {}

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.billed}


class AuditUnavailable(SpendgateError):
    """An audited change cannot get its entry: the audit chain's head row is gone (the
    database refuses its deletion since migration 0027, so only somebody who dropped the
    triggers can have removed it). No retry helps until an operator restores it."""

    status = 503
    code = "audit_unavailable"


class UpstreamTimeout(SpendgateError):
    """The provider did not answer in time. ``billable``: it had the whole request (a
    read timeout on a 2xx or before any answer), so it is generating and will bill the
    call; False: the timeout came before that (connecting, the body still going out) or
    the provider was answering with an error. ``billed``: the headers that tell the
    client what the gateway booked."""

    status = 504
    code = "upstream_timeout"
    kind = "api_error"
    anthropic_kind = "api_error"

    def __init__(
        self, message: str, *, billable: bool = True, billed: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.billable = billable
        self.billed = billed or {}

    def headers(self) -> dict[str, str]:
        return dict(self.billed)


class ConfigError(Exception):
    """The configuration file or environment is wrong; raised before serving."""
