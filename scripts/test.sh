#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,dev]'
# Four worker processes, whatever the cores (each test has its own databases and Redis
# prefix): much of the suite waits on servers, subprocesses, browsers and timeouts, so
# on the 2-core CI machine 4 workers took 8 min 14 s where 2 (one per core) took
# 15 min 53 s. `-n 0` runs serially.
# Bytecode: where the environment sets PYTHONDONTWRITEBYTECODE (some containers do), every
# Python process of the run compiled spendgate from source again: each of the hundred-odd
# `spendgate serve` replicas and workers the tests start (0.5 s of CPU each), every CLI
# run, every migration (Alembic loads its 28 scripts each time: 38 ms of CPU without
# bytecode, 10 ms with). The run keeps its bytecode under .venv instead, so the source
# tree stays as clean as that setting keeps it.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX="$PWD/.venv/pycache"
fi
exec .venv/bin/python -m pytest -n 4 "$@"
