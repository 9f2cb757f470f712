"""Virtual keys and ids: generation, hashing, constant-time comparison (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os

KEY_PREFIX = "sk-sg-"
ADMIN_TOKEN_PREFIX = "sg-admin-"
PREFIX_SHOWN = 12


def new_id(prefix: str) -> str:
    """``org_3f9c…``: a prefixed random id (96 bits)."""
    return f"{prefix}_{os.urandom(12).hex()}"


class CountedIds:
    """``<prefix>_<random per process><counter>``: unique across replicas, no syscall per
    call (the hot path makes a request id and a reservation id for every call)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = f"{prefix}_{os.urandom(6).hex()}"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


class RequestIds(CountedIds):
    """``req_…``: the ``x-request-id`` of each call."""

    def __init__(self) -> None:
        super().__init__("req")


def _random_secret(prefix: str) -> str:
    """``prefix`` followed by 256 random bits, URL-safe base64 without padding."""
    return prefix + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def new_virtual_key() -> str:
    return _random_secret(KEY_PREFIX)


def new_admin_token() -> str:
    """Admin tokens look unlike virtual keys so neither is ever mistaken for the other."""
    return _random_secret(ADMIN_TOKEN_PREFIX)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest; secrets carry 256 bits of entropy, so no salt is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    """The start of a secret, kept for identification: the fixed prefix and a few random
    characters (``sg-admin-`` is longer than ``sk-sg-``, so it shows as many of them)."""
    fixed = ADMIN_TOKEN_PREFIX if secret.startswith(ADMIN_TOKEN_PREFIX) else KEY_PREFIX
    return secret[: len(fixed) + PREFIX_SHOWN - len(KEY_PREFIX)]


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
