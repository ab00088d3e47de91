#!/usr/bin/env bash
# The soak benchmark in one command (see bench/soak.py for what it does and prints).
#   bench/soak.sh [--duration S (300; or STOCKROOM_SOAK_SECONDS)] [--clients N] [--report-every S]
# Environment: STOCKROOM_BENCH_DATABASE_URL (admin URL), STOCKROOM_BENCH_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python bench/soak.py "$@"
