#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,dev]'
# The suite is mostly CPU-bound: one worker process per core (at most 4; each test has its
# own databases and Redis prefix), so the cores work while a test waits on a browser or a
# server. `-n 0` runs serially.
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 "$@"
