"""``spendgate serve --workers N``: one ``/metrics`` for all N worker processes.

uvicorn's workers share one listening socket, so a scrape reaches whichever worker
accepts it. With N > 1 every worker keeps its counters and histograms in files of a
shared directory (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``),
and each scrape sums them all: any worker answers for the whole process group.

This module imports no prometheus-client: the variable must be set before the workers
import it (they are spawned, so they import it fresh).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def multiprocess_directory(workers: int) -> Iterator[Path | None]:
    """With ``workers`` > 1 (or ``PROMETHEUS_MULTIPROC_DIR`` already set), a directory
    for the workers' metric files, emptied of a previous run's, in the environment the
    workers inherit. One made here is removed afterwards; one given is left in place."""
    given = os.environ.get(VARIABLE)
    if workers <= 1 and not given:
        yield None
        return
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="spendgate-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # counters of a previous run would add up with ours
        stale.unlink()
    os.environ[VARIABLE] = str(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)
            del os.environ[VARIABLE]
