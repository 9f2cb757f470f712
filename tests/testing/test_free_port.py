"""``free_port``: the ports test servers are started on never come from the kernel's
ephemeral range (which lends a just-closed port to the next taker) and never from
another pytest-xdist worker's share."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spendgate.testing import processes
from spendgate.testing.processes import free_port


def _picks(monkeypatch: pytest.MonkeyPatch, worker: str, n: int) -> list[int]:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setattr(processes, "_next_port", None)
    return [free_port() for _ in range(n)]


def test_workers_pick_from_shares_of_their_own_outside_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low = int(ranges[0])
    picked = {w: _picks(monkeypatch, w, 40) for w in ("gw0", "gw1", "gw3")}
    for ports in picked.values():
        assert len(set(ports)) == len(ports)  # a worker gets no port twice in a row
        assert all(p < low for p in ports)
    assert set(picked["gw0"]).isdisjoint(picked["gw1"])
    assert set(picked["gw1"]).isdisjoint(picked["gw3"])
    assert set(picked["gw0"]).isdisjoint(picked["gw3"])


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    start = processes.PORTS_FROM + 2 * processes.PORTS_PER_WORKER
    monkeypatch.setattr(processes, "_next_port", start)
    first = free_port()  # the share's first free port
    with socket.create_server(("127.0.0.1", first)):
        monkeypatch.setattr(processes, "_next_port", first)
        assert first < free_port() < start + processes.PORTS_PER_WORKER
