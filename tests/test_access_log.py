"""The API's access lines: the same lines the logging set-up wrote, buffered like nginx's
``access_log ... buffer= flush=``."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.logs import AccessLog, JsonFormatter, json_ts
from tests.waiting import eventually


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_timestamp_is_the_json_formatters(now: float) -> None:
    assert json_ts(now) == datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for a full buffer
    yield read, write
    os.close(read)
    os.close(write)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


async def test_lines_are_buffered_then_written_together(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(write)
    log.enabled = True
    log.write("POST", "/api/v1/inventory/restock", 201, "/api/v1/inventory/restock", 1.5, "r1")
    log.write("GET", "/healthz", 200, "/healthz", 0.2, None)
    assert _read(read) == b""  # not yet: one write for both, FLUSH_SECONDS later
    got: list[bytes] = []

    async def written() -> bool:
        got.append(_read(read))
        return bool(got[-1])

    await eventually(written, timeout=5, what="the flush")
    lines = b"".join(got).decode().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    # the fields, and their order, of the JsonFormatter line the logging set-up wrote
    record = logging.LogRecord("stockroom.access", logging.INFO, "", 0, "%s %s %s", (), None)
    record.msg, record.args = "%s %s %s", ("POST", "/api/v1/inventory/restock", 201)
    record.route, record.status, record.duration_ms = "/api/v1/inventory/restock", 201, 1.5
    record.request_id = "r1"
    expected = json.loads(JsonFormatter().format(record))
    assert list(first) == list(expected)
    assert {k: v for k, v in first.items() if k != "ts"} == {
        k: v for k, v in expected.items() if k != "ts"
    }


async def test_a_full_buffer_is_written_at_once(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(write)
    log.enabled = True
    path = "/x" * 200
    n = log.FLUSH_BYTES // 400 + 1
    for _ in range(n):
        log.write("GET", path, 404, "unmatched", 0.1, None)
    data = b""
    while chunk := _read(read):
        data += chunk
    # written when 64 KiB had collected, without waiting for the timer; the rest waits for it
    assert len(data) >= log.FLUSH_BYTES and data.endswith(b"\n")
    log.flush()
    while chunk := _read(read):
        data += chunk
    assert data.count(b"\n") == n


def test_off_until_configured_and_text_lines(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(write)
    log.write("GET", "/healthz", 200, "/healthz", 0.1, None)
    log.flush()
    assert _read(read) == b""
    log.enabled, log.json_lines = True, False
    log.write("GET", "/healthz", 200, "/healthz", 0.1, "abc")  # no loop: written at once
    line = _read(read).decode()
    assert line.endswith(" INFO    stockroom.access [abc] GET /healthz 200\n"), line
