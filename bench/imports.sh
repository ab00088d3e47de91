#!/usr/bin/env bash
# The bulk-import benchmark in one command (see bench/imports.py for what it does and prints).
#   bench/imports.sh [--lines N] [--products N] [--locations N] [--budget S]
# Environment: STOCKROOM_BENCH_DATABASE_URL (admin URL), STOCKROOM_BENCH_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python bench/imports.py "$@"
