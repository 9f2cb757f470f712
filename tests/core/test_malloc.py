"""``spendgate.core.malloc``: freed memory goes back to the system (this machine's glibc)."""

from __future__ import annotations

import os

from spendgate.core import malloc

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def test_trim_returns_the_pages_freed_below_live_blocks() -> None:
    """32 MiB of 32 KiB blocks (malloc's heap, not mappings of their own), all freed but
    the last, which keeps the heap from shrinking at its top: they stay resident until
    ``trim`` hands them back."""
    assert malloc.available()
    blocks = [bytes(32 * 1024) for _ in range(1024)]
    blocks[-1] = bytearray(blocks[-1])  # a block allocated after the others, kept
    pin = blocks[-1]
    del blocks
    before = rss()
    assert malloc.trim()
    assert before - rss() >= 16 * 2**20
    assert len(pin) == 32 * 1024
