"""Handing malloc's free memory back to the system (glibc only).

glibc's malloc keeps memory freed inside its heaps for later use, and a heap only
shrinks from its top, so blocks freed below live ones stay resident. A long-running
gateway's RSS crept up that way (issue #19) while malloc's bytes in use stayed flat.
``trim`` asks glibc for ``malloc_trim(0)``: the free pages of every arena, not just the
heap's top, go back to the system (they stay mapped and come back zeroed when used
again). Where the C library has no ``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def available() -> bool:
    """Whether this process's C library can trim (glibc)."""
    return _TRIM is not None


def trim() -> bool:
    """Return malloc's free pages to the system; whether any were returned."""
    return _TRIM is not None and bool(_TRIM(0))
