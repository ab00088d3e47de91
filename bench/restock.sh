#!/usr/bin/env bash
# The restock benchmark in one command (see bench/restock.py for what it does and prints).
#   bench/restock.sh [--workers N] [--duration S] [--profile] [--keep-logs] ...
# Environment: STOCKROOM_BENCH_DATABASE_URL (admin URL), STOCKROOM_BENCH_REDIS_URL,
# STOCKROOM_BENCH_WORKERS.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python bench/restock.py "$@"
