#!/usr/bin/env bash
# Side-by-side gateway benchmark: spendgate vs LiteLLM proxy vs the bare fake upstream.
#
#   bash bench/run.sh            # full run (~15-25 min, plus the one-time LiteLLM install)
#   bash bench/run.sh --quick    # shorter RSS-flatness run (20k vs 200k requests)
#
# Extra arguments go to bench/gateway_bench.py (see --help there).
# Installs what it needs: Debian's wrk, and bench/.venv-litellm (litellm[proxy] + py-spy),
# a bench-only venv kept apart from the project's .venv.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

log() { printf '[run.sh] %s\n' "$*" >&2; }

# -- wrk (Debian) -------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk from Debian"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    if ! $SUDO apt-get install -y wrk; then
        $SUDO apt-get update
        $SUDO apt-get install -y wrk
    fi
fi
command -v taskset >/dev/null 2>&1 || { log "taskset (util-linux) is required"; exit 1; }

# -- the project's own venv (normally already there) --------------------------------------------
if [ ! -x "$ROOT/.venv/bin/spendgate" ]; then
    log "creating the project venv .venv (pip install -e .)"
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT"
fi

# -- LiteLLM + py-spy, bench-only venv ----------------------------------------------------------
LVENV="$HERE/.venv-litellm"
if [ ! -x "$LVENV/bin/litellm" ] || [ ! -x "$LVENV/bin/py-spy" ]; then
    log "creating $LVENV with litellm[proxy] and py-spy (one time, a few minutes)"
    [ -x "$LVENV/bin/python" ] || python3 -m venv "$LVENV"
    "$LVENV/bin/pip" install -q --upgrade pip
    "$LVENV/bin/pip" install -q 'litellm[proxy]' py-spy
fi

mkdir -p "$HERE/results"
exec "$ROOT/.venv/bin/python" "$HERE/gateway_bench.py" "$@"
