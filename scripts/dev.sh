#!/usr/bin/env bash
# The run command: the whole stack on this machine (embedded PostgreSQL and Redis unless
# STOCKROOM_DATABASE_URL / STOCKROOM_REDIS_URL are set). Arguments go to `stockroom dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/stockroom dev "$@"
