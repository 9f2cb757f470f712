"""Webhook secrets (and endpoint credentials) encrypted at rest with Fernet.

The key comes from ``SPENDGATE_SECRET_KEY``: a Fernet key (``Fernet.generate_key()``)
or any passphrase (stretched with HKDF-SHA256). Several comma-separated keys rotate
the encryption key: the first encrypts, every one decrypts; ``spendgate webhooks
reencrypt`` (:meth:`WebhookStore.reencrypt`) rewrites stored tokens under the first, after
which the others can be dropped.

Without ``SPENDGATE_SECRET_KEY`` the key is derived from ``SPENDGATE_MASTER_KEY`` with
HKDF-SHA256 (salt-free, ``info=b"spendgate secrets v1"``). That keeps a single-secret
setup working, but changing the master key then makes stored webhook secrets
unreadable: set ``SPENDGATE_SECRET_KEY`` before rotating the master key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spendgate.errors import ConfigError

INFO = b"spendgate secrets v1"


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with any configured key."""


def _fernet_key(material: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(material.encode())
        if len(raw) == 32 and len(material) == 44:
            return material.encode()
    except (binascii.Error, ValueError):
        pass
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(
        material.encode()
    )
    return base64.urlsafe_b64encode(derived)


class SecretBox:
    """``encrypt``/``decrypt`` short strings; the plaintext never leaves this object logged."""

    def __init__(self, *keys: str) -> None:
        usable = [k.strip() for k in keys if k.strip()]
        if not usable:
            raise ConfigError("a secret key is required to encrypt webhook secrets")
        fernets = [Fernet(_fernet_key(k)) for k in usable]
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    @classmethod
    def from_env(cls, env: Mapping[str, str], master_key: str | None = None) -> SecretBox:
        """``SPENDGATE_SECRET_KEY`` (comma separated), else derived from the master key."""
        configured = env.get("SPENDGATE_SECRET_KEY", "")
        if configured.strip():
            return cls(*configured.split(","))
        master = master_key or env.get("SPENDGATE_MASTER_KEY")
        if not master:
            raise ConfigError(
                "set SPENDGATE_SECRET_KEY (or SPENDGATE_MASTER_KEY) to store "
                "webhook secrets encrypted"
            )
        return cls(master)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is encrypted under the first (newest) key."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def readable(self, token: str) -> bool:
        """Whether some configured key decrypts ``token``."""
        try:
            self._fernet.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """``token``'s plaintext encrypted again under the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable(
                "stored secret does not decrypt with the configured keys"
            ) from exc

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable(
                "stored secret does not decrypt with the configured keys"
            ) from exc
