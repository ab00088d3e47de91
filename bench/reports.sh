#!/usr/bin/env bash
# The reports benchmark in one command (see bench/reports.py for what it does and prints).
#   bench/reports.sh [--products N] [--movements K] [--scale-down N] [--budget S] ...
# Environment: STOCKROOM_BENCH_DATABASE_URL (admin URL), STOCKROOM_BENCH_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python bench/reports.py "$@"
