"""Structured logs: one JSON object per line (or plain text), each with the request id of
the call being served.

    REQUEST_ID       the request being served: set by the proxy (its ``x-request-id``) and
                     by the admin app (the caller's ``X-Request-Id``, or a new id)
    JsonFormatter    {"timestamp", "level", "logger", "message", "request_id", ...extra}
    TextFormatter    ``2026-12-04T13:43:36.123Z INFO spendgate.proxy [req_…] message``
    logging_config   the ``dictConfig`` that ``spendgate serve`` applies in every worker,
                     uvicorn's loggers included

Secrets never reach a log: nothing in spendgate passes a key, token, signing secret or
Slack URL to a logger (``tests/security/test_secrets_at_rest.py`` checks both formats).
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "text"]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_access = logging.getLogger("spendgate.access")
#: a caller's X-Request-Id that is kept (anything else is replaced by a new id)
_CALLER_ID = re.compile(r"[A-Za-z0-9_.:/+=-]{1,100}")

#: the request being served in this task (None outside a request)
REQUEST_ID: ContextVar[str | None] = ContextVar("spendgate_request_id", default=None)

#: what every LogRecord carries; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request_id(record: logging.LogRecord) -> str | None:
    given: str | None = getattr(record, "request_id", None)
    return given or REQUEST_ID.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields are kept (never over the fixed ones)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out.setdefault(key, value)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``timestamp LEVEL logger [request id] message`` and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id(record)
        where = f" [{request_id}]" if request_id else ""
        line = f"{_timestamp(record)} {record.levelname} {record.name}{where} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def logging_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """spendgate's and uvicorn's loggers at ``level``, other libraries' at WARNING or above
    (their DEBUG output is a firehose), all to stderr in ``fmt``."""
    numeric = logging.getLevelName(level.upper())
    others = max(numeric, logging.WARNING)
    formatter = FORMATTERS[fmt]
    own = {"handlers": ["stderr"], "level": numeric, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
            }
        },
        "loggers": {
            "spendgate": own,
            "uvicorn": own,
            "uvicorn.error": {"level": numeric},
            "uvicorn.access": own,
        },
        "root": {"handlers": ["stderr"], "level": others},
    }


def configure(level: str, fmt: LogFormat) -> dict[str, Any]:
    """Apply :func:`logging_config` to this process; returns it (for uvicorn's workers)."""
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    return config


def console_line(message: str, fmt: LogFormat, *, logger: str = "spendgate") -> None:
    """A line meant for the person at the terminal (a demo key shown once), never sent
    through logging (log handlers ship and keep lines); in the JSON format it is still
    one JSON object, so every line on stderr parses."""
    if fmt == "json":
        record = logging.LogRecord(logger, logging.WARNING, "", 0, message, (), None)
        message = JsonFormatter().format(record)
    print(message, file=sys.stderr, flush=True)


class AdminRequestIds:
    """ASGI wrapper of the admin app: the request id is the caller's ``X-Request-Id`` (1-100
    of ``A-Z a-z 0-9 _ . : / + = -``) or a new one, for every log line and audit entry of
    the request; at DEBUG each request ends with a ``request finished`` line with the
    proxy's fields: ``kind`` (``kind_of(path)``: ``admin`` or ``console``), ``status``,
    ``outcome`` (``ok``, or the error's ``code``) and ``duration_ms``."""

    def __init__(
        self,
        app: Any,
        new_id: Callable[[str], str],
        kind_of: Callable[[str], str],
        monotonic: Callable[[], float],
    ) -> None:
        self._app = app
        self._new_id = new_id
        self._kind_of = kind_of
        self._monotonic = monotonic

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        given = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CALLER_ID.fullmatch(given) else self._new_id("req")
        token = REQUEST_ID.set(request_id)
        if not _access.isEnabledFor(logging.DEBUG):
            try:
                await self._app(scope, receive, send)
            finally:
                REQUEST_ID.reset(token)
            return
        status, outcome = [500], ["internal_error"]

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                outcome[0] = "ok" if status[0] < 400 else "error"
            elif message["type"] == "http.response.body" and outcome[0] == "error":
                outcome[0] = _error_code(message.get("body", b""))
            await send(message)

        started = self._monotonic()
        try:
            await self._app(scope, receive, noting)
        finally:
            path = str(scope.get("path"))
            _access.debug(
                "request finished",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": path,
                    "kind": self._kind_of(path),
                    "status": status[0],
                    "outcome": outcome[0],
                    "duration_ms": round((self._monotonic() - started) * 1000, 3),
                },
            )
            REQUEST_ID.reset(token)


def _error_code(body: bytes) -> str:
    """The ``error.code`` of an error answer in the admin API's format; ``error`` for any
    other (a console page, an unreadable body)."""
    try:
        code = orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "error"
    return code if isinstance(code, str) else "error"
