"""Logging: JSON lines in production, readable lines in development; every record carries the
``request_id`` of the request (or of the request that enqueued the job) being served."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import sys
import time
from contextvars import ContextVar

from shared.settings import LogFormat, Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": json_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _split(now: float) -> tuple[int, int]:
    # whole seconds and milliseconds, rounded as datetime.fromtimestamp rounds
    fraction, whole = math.modf(now)
    seconds, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return seconds, micros // 1000


def json_ts(now: float) -> str:
    """The "ts" of a line created at ``now`` (``JsonFormatter``'s and the access lines'):
    ``datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")``, without a
    datetime per line."""
    seconds, millis = _split(now)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}+00:00"


class AccessLog:
    """The API's access lines (logger ``stockroom.access``), written as nginx writes with
    ``access_log ... buffer=64k flush=...``: lines collect in memory and reach stderr in one
    write once 64 KiB have collected or 0.25 s after the first of them, and at shutdown. Per
    request that saves a LogRecord, the handler's lock and a write(2): ~8 % of the API's CPU
    per restock, measured. A crash can lose the last 0.25 s of access lines; every other log
    line is written at once, as before. The lines are those the logging set-up would write
    (``JsonFormatter``, or the text format); off until ``configure_logging`` turns it on."""

    FLUSH_BYTES = 64 * 1024
    FLUSH_SECONDS = 0.25

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.enabled = False
        self.json_lines = True
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(
        self,
        method: str,
        path: str,
        status: int,
        route: str,
        duration_ms: float,
        request_id: str | None,
    ) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.json_lines:
            entry = {
                "ts": json_ts(now),
                "level": "info",
                "logger": "stockroom.access",
                "msg": f"{method} {path} {status}",
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
            }
            line = json.dumps(entry, default=str) + "\n"
        else:
            # logging.Formatter's asctime (milliseconds truncated, as LogRecord.msecs is)
            asctime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            asctime += f",{int((now - int(now)) * 1000):03d}"
            fields = {
                "asctime": asctime,
                "levelname": "INFO",
                "name": "stockroom.access",
                "request_id": request_id,
                "message": f"{method} {path} {status}",
            }
            line = TEXT_FORMAT % fields + "\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to flush later: now
                self.flush()
                return
            self._timer = loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = memoryview("".join(self._lines).encode())
        self._lines.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # stderr gone: nothing to tell it
            pass


ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.effective_log_format is LogFormat.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    ACCESS_LOG.json_lines = settings.effective_log_format is LogFormat.json
    ACCESS_LOG.enabled = level <= logging.INFO
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # ARQ logs every job start and finish at INFO, a cron tick a second included; our own
    # job records and logs say what matters.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    logging.getLogger("arq.jobs").setLevel(logging.WARNING)
