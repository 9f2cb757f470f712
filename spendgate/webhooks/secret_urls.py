"""URLs that are themselves credentials (Slack incoming webhooks) or carry one (user-info,
``https://user:password@host/…``).

Such a URL is stored encrypted (``webhook_endpoints.url_encrypted``) and shown only
masked: :func:`mask_url` keeps what identifies the receiver (scheme, host, port, a
leading word such as ``services``) and hides the rest, e.g.
``https://hooks.slack.com/services/T…/B…/…``.

While the delivery worker posts to such a URL, :data:`REDACTOR` (a logging filter on
the ``httpx`` logger, which logs every request's URL at INFO) replaces it with its
masked form in log records.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

#: endpoint kinds whose URL is a credential
SECRET_URL_KINDS: frozenset[str] = frozenset({"slack"})


def is_secret_url(kind: str, url: str) -> bool:
    """Whether ``url`` is (or holds) a credential: a Slack URL, or any URL with user-info
    (``https://user:password@host/…``)."""
    if kind in SECRET_URL_KINDS:
        return True
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return parts.username is not None or parts.password is not None


HIDDEN = "…"
MAX_WORD = 32


def mask_url(url: str) -> str:
    """Scheme, host and port; the first path segment if it is a plain word and more
    follow; the first character of each further segment but the last; nothing of the
    last segment, user-info, query or fragment. Masking a masked URL changes nothing."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return HIDDEN
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + ("" if port is None else f":{port}")
    segments = [s for s in parts.path.split("/") if s]
    shown = segments[:1] if len(segments) > 1 and _word(segments[0]) else []
    shown += [s[0] + HIDDEN for s in segments[len(shown) : -1]]
    if segments:
        shown.append(HIDDEN)
    path = "/" + "/".join(shown) if shown else ""
    query = "?" + HIDDEN if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}"


def _word(segment: str) -> bool:
    return segment.isascii() and segment.isalpha() and len(segment) <= MAX_WORD


class UrlRedactor(logging.Filter):
    """Replaces the URLs it is currently :meth:`hiding` in the records it filters."""

    def __init__(self) -> None:
        super().__init__()
        self._hidden: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hiding(self, *urls: str) -> Iterator[None]:
        """Hide ``urls`` (e.g. a URL and its normalised spelling) inside the block."""
        with self._lock:
            self._hidden.update(urls)
        try:
            yield
        finally:
            with self._lock:
                self._hidden.subtract(urls)
                for url in urls:
                    if self._hidden[url] <= 0:
                        del self._hidden[url]

    def redact(self, text: str) -> str:
        with self._lock:
            hidden = sorted(self._hidden, key=len, reverse=True)
        for url in hidden:
            if url in text:
                text = text.replace(url, mask_url(url))
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._hidden:
            return True
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact_arg(a) for a in record.args)
        return True

    def _redact_arg(self, arg: object) -> object:
        if arg is None or isinstance(arg, (int, float)):
            return arg  # keeps %d and %f working
        text = str(arg)
        redacted = self.redact(text)
        return arg if redacted == text else redacted


#: installed on the ``httpx`` logger by the delivery worker
REDACTOR = UrlRedactor()
