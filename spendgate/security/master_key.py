"""The master key ``spendgate serve`` uses when ``SPENDGATE_MASTER_KEY`` is not set.

It is generated once and kept in a file only its owner may read (mode 0600): by default
``spendgate-master.key`` in the data directory (next to the SQLite file; the working
directory for other databases), or ``SPENDGATE_MASTER_KEY_FILE``. The next start reads it
back, so the keys derived from it (the encryption key of webhook secrets, the audit
checkpoint key) stay the same and stored secrets keep decrypting.

The file is written whole under a temporary name and then linked into place, so two
processes starting at once agree on one key and none reads a half-written file. A file
that others may read is refused (like ``ssh`` refuses such a private key).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spendgate.errors import ConfigError
from spendgate.settings import data_directory

KEY_FILE = "spendgate-master.key"
PREFIX = "sg-master-"


@dataclass(frozen=True, slots=True)
class KeptKey:
    key: str = field(repr=False)
    path: Path
    #: True when this start generated it (and wrote the file)
    created: bool


def key_file(database_url: str, env: Mapping[str, str]) -> Path:
    """``SPENDGATE_MASTER_KEY_FILE``, else ``spendgate-master.key`` in the data directory."""
    explicit = env.get("SPENDGATE_MASTER_KEY_FILE", "").strip()
    return Path(explicit) if explicit else data_directory(database_url) / KEY_FILE


def kept_master_key(path: Path) -> KeptKey:
    """The key in ``path``, or a new one written there (0600) if there is none."""
    if path.exists():
        return KeptKey(read_key(path), path, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = PREFIX + secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process was first: use its key
            return KeptKey(read_key(path), path, False)
    finally:
        temporary.unlink(missing_ok=True)
    return KeptKey(key, path, True)


def read_key(path: Path) -> str:
    """The key kept in ``path``; refused when others may read the file or it holds none."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} may be read by others (mode {mode:04o}); it holds the master key: "
            f"chmod 600 {path}"
        )
    key = path.read_text().strip()
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"{path} does not hold a master key (one line of text)")
    return key
