#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,dev]'
exec .venv/bin/python -m pytest "$@"
