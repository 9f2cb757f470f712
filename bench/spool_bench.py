"""What the ledger spool costs a call: ``LedgerWriter.commit`` (encode the row, append it
to the spool; in ``"call"`` sync mode, wait for the group commit's fdatasync) at several
concurrencies, in both sync modes, on the disk that holds ``--dir``. Prints a table; no
database is written.

    .venv/bin/python bench/spool_bench.py [--dir DIR] [--records N]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from spendgate.store.database import create_engine
from spendgate.store.ledger import LedgerEntry, LedgerWriter
from spendgate.store.spool import Spool

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def row(n: int) -> LedgerEntry:
    return LedgerEntry(
        f"req_{n:024x}", "org_0763738c68457e224b105495", "team_0763738c68457e224b105495",
        None, None, "key_0763738c68457e224b105495", ["prod"], "openai", "gpt-4o-mini",
        "gpt-4o-mini", "chat", False, "ok", 200, 120, 40, 0, 0, 0, 42_000, False, False, 3,
        NOW, NOW,
    )  # fmt: skip


async def measure(writer: LedgerWriter, concurrency: int, records: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per record."""
    per_worker = records // concurrency

    async def worker(base: int) -> None:
        for n in range(per_worker):
            await writer.commit(row(base + n))

    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(worker(i * per_worker) for i in range(concurrency)))
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    done = per_worker * concurrency
    return 1000 * wall / done, 1000 * cpu / done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".", help="where the spool goes (its disk is measured)")
    parser.add_argument("--records", type=int, default=4000)
    args = parser.parse_args()
    print("| spool_sync | concurrent calls | wall ms per commit | CPU ms per commit |")
    print("|---|--:|--:|--:|")
    for mode in ("interval", "call"):
        work = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
        engine = create_engine("sqlite:///:memory:")
        spool = Spool(work, header={"db": "bench"}, max_bytes=1 << 40, sync=mode)
        writer = LedgerWriter(engine, flush_seconds=3600, batch_size=1 << 40, spool=spool)
        spool.open()
        try:
            for concurrency in (1, 16, 64):
                wall, cpu = await measure(writer, concurrency, args.records)
                print(f"| {mode} | {concurrency} | {wall:.3f} | {cpu:.3f} |")
        finally:
            await spool.close()
            await engine.dispose()
            shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
