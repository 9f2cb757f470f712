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
exec .venv/bin/python -m pytest -n 4 "$@"
