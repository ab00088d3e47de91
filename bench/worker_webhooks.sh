#!/usr/bin/env bash
# bench/worker_webhooks.py in one command (see its docstring for what it measures and prints).
# Environment: STOCKROOM_BENCH_DATABASE_URL (admin URL), STOCKROOM_BENCH_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python bench/worker_webhooks.py "$@"
