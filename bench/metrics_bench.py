"""What the Prometheus metrics cost a proxied call, in CPU, measured in isolation.

A call of the proxy touches the metrics at fixed points: ``MeteredProxy`` around it (two
context variables, two clock reads, the request counter and the latency histogram at the
end), ``identified`` (the request id), ``upstream`` (one histogram) and ``booked`` (the
spend counter); a refused call ``refused`` instead of the last two. This times those
points around an ASGI app that does nothing else, against the same app unwrapped, over
many calls in one event loop. Prints a table.

    .venv/bin/python bench/metrics_bench.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from spendgate.errors import InsufficientFunds
from spendgate.observability.metrics import GatewayMetrics
from spendgate.store.ledger import LedgerEntry

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ENTRY = LedgerEntry(
    "req_0", "org_0763738c68457e224b105495", "team_0763738c68457e224b105495", None, None,
    "key_0763738c68457e224b105495", ["prod"], "openai", "gpt-4o-mini", "gpt-4o-mini", "chat",
    False, "ok", 200, 120, 40, 0, 0, 0, 42_000, False, False, 3, NOW, NOW,
)  # fmt: skip
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
REFUSAL = InsufficientFunds("the wallet is empty")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_: Any) -> None:
    return None


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    return None


def _apps(metrics: GatewayMetrics) -> dict[str, Any]:
    async def served(scope: Any, receive: Any, send: Any) -> None:
        metrics.identified("req_0763738c68457e224b105495")
        metrics.upstream("openai", 0.0123)
        metrics.booked(ENTRY)

    async def refused(scope: Any, receive: Any, send: Any) -> None:
        metrics.identified("req_0763738c68457e224b105495")
        metrics.refused(REFUSAL)

    return {
        "no metrics (baseline)": _bare,
        "served call": metrics.proxied(served),
        "refused call": metrics.proxied(refused),
    }


async def _cpu_per_call(app: Any, calls: int) -> float:
    """CPU microseconds per call."""
    start = time.process_time()
    for _ in range(calls):
        await app(SCOPE, _receive, _send)
    return (time.process_time() - start) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    apps = _apps(GatewayMetrics(time.perf_counter))
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, best of each: the least disturbed round
        for name, app in apps.items():
            best[name] = min(best.get(name, float("inf")), await _cpu_per_call(app, calls))
    base = best["no metrics (baseline)"]
    print(f"\n{calls:,} calls x {rounds} rounds, best round, CPU per call\n")
    print("| path | CPU µs/call | added by metrics µs |")
    print("|---|--:|--:|")
    for name, micros in best.items():
        added = "–" if name.startswith("no metrics") else f"{micros - base:.2f}"
        print(f"| {name} | {micros:.2f} | {added} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
