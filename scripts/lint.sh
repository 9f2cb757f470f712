#!/usr/bin/env bash
# Lint, format check and strict type check, with the tools scripts/test.sh installed.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check spendgate tests bench scripts
.venv/bin/ruff format --check spendgate tests bench scripts
.venv/bin/mypy
