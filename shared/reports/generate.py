"""Generating a report: the worker's side.

One attempt, in bounded memory whatever the data size:
1. Earlier attempts' leftovers are deleted; the worker's chart renderer (a long-lived child
   process: matplotlib is imported once per worker) is started if it is not running.
2. In one REPEATABLE READ, read-only snapshot, exported to a second connection: there the
   totals are aggregated in PostgreSQL (exact NUMERIC sums) while on the first the rows stream
   out with ``COPY (query) TO STDOUT (FORMAT csv)``, in order, as PostgreSQL produces them
   (movements one UTC day per statement: see ``queries.Definition.slices``).
3. CSV is PostgreSQL's own output, cut into ~1 MiB chunks and stored as it arrives. JSON and
   XLSX are made by the converter, a child process fed the CSV through a pipe; what it writes
   is stored the same way. Backpressure runs end to end: the chunk inserts pace the pipe, the
   pipe paces the COPY, the COPY paces the query.
4. The chart is drawn from the totals as soon as they are known, while the rows still stream;
   the file and chart are published in one transaction (see ``shared.reports.storage``).

Progress: 5 once the snapshot is taken, 5 → 95 as rows stream (see ``_RowProgress``), then 97
with the chart stored, and 100 when the job completes; written at most twice a second.

Cancellation (the handler task is cancelled): the converter is killed (and the chart renderer,
if it is drawing this report's chart), the COPY is stopped, this attempt's chunks are deleted;
nothing was published, so no partial file is ever visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from pydantic import ValidationError

from shared.jobs.retry import PermanentJobError, TransientJobError
from shared.reports import queries, storage
from shared.reports.render import EXIT_DOES_NOT_FIT, spreadsheet_safe_sql
from shared.reports.schemas import (
    CONTENT_TYPES,
    REPORT_REQUEST,
    ReportFormat,
    ReportKind,
    job_payload,
)

log = logging.getLogger("stockroom.reports")

# A report holds up to four pooled connections while it runs (the writer's, the COPY
# reader's, the summary's, and a short one for progress), taken one after another, and keeps
# a PostgreSQL backend and a renderer busy. A worker process runs MAX_REPORTS_PER_WORKER at
# most, and no more than its pool serves: more would each hold some connections and wait for
# the rest, for ever. The others wait their turn (their leases renewed all the while). More
# reports at a time is a matter of more worker processes.
MAX_REPORTS_PER_WORKER = 2
CONNECTIONS_PER_REPORT = 4


def report_slots_for(pool_size: int) -> int:
    """How many reports a worker whose pool holds ``pool_size`` connections runs at a time."""
    return max(1, min(MAX_REPORTS_PER_WORKER, pool_size // CONNECTIONS_PER_REPORT))


class Progress(Protocol):
    """Records the job's progress (rate-limited unless ``force``: a phase's end is forced)."""

    async def __call__(self, percent: int, *, force: bool = False) -> None: ...


# After a publish is refused (cancel requested, or the lease lost) the job's runner cancels this
# task within about a second; waiting for that keeps the outcome the runner's to record.
REFUSED_PUBLISH_WAIT_SECONDS = 5.0
PIPE_LIMIT = 1 << 20
_DATE = re.compile(rb"^\d{4}-\d\d-\d\d$")
_SNAPSHOT_ID = re.compile(r"^[0-9A-F-]+$")


@dataclass(frozen=True, slots=True)
class ReportSettings:
    max_bytes: int
    retention_hours: int


class _RowProgress:
    """Turns the CSV bytes going by into a percentage between ``low`` and ``high``: rows
    counted against the exact count once the totals (aggregated alongside) give it, against
    the planner's estimate until then; for movements, the days passed, weighted by their
    movements once the totals give them, by the calendar until then."""

    def __init__(self, report: Progress, low: int, high: int, days: list[datetime]):
        self._report = report
        self._low = low
        self._span = high - low
        self._rows = 0
        self._estimate: int | None = None
        self._expected: int | None = None
        self._calendar = {
            day.date().isoformat().encode(): i / max(len(days), 1) for i, day in enumerate(days)
        }
        self._before_day: dict[bytes, float] = {}
        self._reported = low

    def estimate(self, rows: int | None) -> None:
        self._estimate = rows

    def learn(self, summarising: asyncio.Task[queries.Summary]) -> None:
        if summarising.cancelled() or summarising.exception() is not None:
            return
        summary = summarising.result()
        self._expected = summary.row_count
        total = sum(movements for _, movements in summary.weights)
        done = 0
        for day, movements in summary.weights:
            self._before_day[day.encode()] = done / max(total, 1)
            done += movements

    async def feed(self, data: bytes) -> None:
        self._rows += data.count(b"\n")
        if self._expected is not None:
            done = min(1.0, self._rows / max(self._expected, 1))
        elif self._estimate:
            done = min(0.9, self._rows / self._estimate)
        else:
            end = data.rfind(b"\n")
            start = data.rfind(b"\n", 0, end) + 1 if end > 0 else -1
            if start < 0:
                return
            day = bytes(data[start : start + 10])
            if not _DATE.match(day):
                return
            found = self._before_day.get(day, self._calendar.get(day))
            if found is None:
                return
            done = found
        # never backwards (the exact count may be above the estimate)
        self._reported = max(self._reported, self._low + int(self._span * done))
        await self._report(self._reported)


async def _draw_chart(
    summarising: asyncio.Task[queries.Summary],
    request: queries.AnyRequest,
    generated_at: datetime,
) -> bytes:
    summary = await asyncio.shield(summarising)
    doc = {
        "kind": request.kind.value,
        "params": job_payload(request)["params"],
        "generated_at": generated_at.isoformat(),
        "totals": summary.totals,
        **summary.chart,
    }
    return await charts.draw(doc)


async def _summarise(
    pool: asyncpg.Pool, snapshot: str, definition: queries.Definition
) -> queries.Summary:
    if not _SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        return await queries.summarise(conn, definition)


class _CopySink:
    """The output side of a COPY that never raises into asyncpg.

    asyncpg leaves a connection waiting forever for a cancellation when a COPY's sink raises
    on the last buffer (the server has finished; nothing will confirm the cancel), and the
    same happens when the task is cancelled inside the sink. So the sink catches everything
    (a failure, or this task's cancellation), asks the server to stop the COPY (a cancel that
    reaches an idle backend is a no-op there), swallows the rest of the data, and ``finish``
    raises what was caught once ``copy_from_query`` has returned."""

    def __init__(
        self, pool: asyncpg.Pool, server_pid: int, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        self._pool = pool
        self._server_pid = server_pid
        self._write = write
        self.failure: BaseException | None = None

    async def __call__(self, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            await self._write(data)
        except BaseException as exc:
            self.failure = exc
            with contextlib.suppress(Exception):
                async with self._pool.acquire() as conn:
                    await conn.execute("SELECT pg_cancel_backend($1)", self._server_pid)

    async def copy_rows(
        self, conn: Any, definition: queries.Definition, *, for_spreadsheets: bool = False
    ) -> int:
        """Stream the report's rows into this sink as CSV with one header row, statement by
        statement (see ``Definition.slices``); returns the number of rows. ``for_spreadsheets``:
        the CSV is the report's file, its text cells neutralised against formula injection
        (``render.spreadsheet_safe_sql``)."""
        rows = 0
        query = definition.sql
        if for_spreadsheets:
            query = spreadsheet_safe_sql(query, definition.columns)
        for i, args in enumerate(definition.slices()):
            sql = await queries.inline(conn, query, args)
            try:
                status: str = await conn.copy_from_query(
                    sql, output=self, format="csv", header=i == 0
                )
            except asyncpg.QueryCanceledError:
                if self.failure is None:
                    raise
            if self.failure is not None:
                raise self.failure
            rows += int(status.split()[-1])
        return rows


async def _spawn(mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.reports.render",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=PIPE_LIMIT,
    )


class ChartRenderer:
    """The worker's chart renderer: one long-lived child process (``render chart``) that draws
    one chart per request, so matplotlib is imported once per worker rather than once per
    report. Requests are serialised (a chart takes a fraction of a second). A request that
    is cancelled or fails mid-exchange kills the process, and the next one starts another.
    Protocol: 8-byte big-endian length + JSON in; a status byte (0 ok, 1 error) + 8-byte
    length + PNG (or the error message) out. The process exits when its stdin closes."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the process if it is not running (so its imports overlap the SQL)."""
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await _spawn("chart")

    async def draw(self, document: dict[str, Any]) -> bytes:
        async with self._lock:
            await self.start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                data = json.dumps(document).encode()
                proc.stdin.write(len(data).to_bytes(8, "big") + data)
                await proc.stdin.drain()
                head = await proc.stdout.readexactly(9)
                body = await proc.stdout.readexactly(int.from_bytes(head[1:], "big"))
            except BaseException:
                await self.stop()
                raise
        if head[0] != 0:
            raise PermanentJobError(f"the chart could not be drawn: {body.decode()}")
        return body

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        await _kill(proc)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


charts = ChartRenderer()


async def _kill(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await proc.wait()


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def filename(kind: ReportKind, fmt: ReportFormat, report_id: uuid.UUID, at: datetime) -> str:
    return f"{kind.value}-{at:%Y%m%d-%H%M%S}-{str(report_id)[:8]}.{fmt.value}"


async def generate_report(
    pool: asyncpg.Pool,
    report_id: uuid.UUID,
    payload: dict[str, Any],
    *,
    worker_id: str,
    generation: int,
    settings: ReportSettings,
    progress: Progress,
) -> dict[str, Any]:
    """Run one attempt at the report whose job is ``report_id`` (claimed by ``worker_id`` as
    its ``generation``); returns the job's result. The caller limits how many run at once
    (``report_slots_for``). The steps: stream the rows into storage (rendered on the way when
    the format is not CSV), store the chart, publish both."""
    try:
        request = REPORT_REQUEST.validate_python(payload)
    except ValidationError as exc:
        raise PermanentJobError(f"the report request is not valid: {exc}") from None
    attempt = _Attempt(pool, report_id, request, settings, progress)
    await progress(0, force=True)
    try:
        await charts.start()
        async with pool.acquire() as write_conn:
            await storage.discard_unpublished(write_conn, report_id)
            await storage.write_unpublished_asynchronously(write_conn)
            file = storage.ChunkWriter(
                write_conn, report_id, attempt.blob_id, storage.PART_FILE, settings.max_bytes
            )
            row_count, summary = await attempt.stream_rows(file)
            await file.close()
            await progress(95, force=True)
            chart_bytes = await attempt.store_chart(write_conn)
            await progress(97, force=True)
            published = await attempt.publish(
                write_conn, worker_id, generation, file.size, chart_bytes, row_count, summary
            )
        if not published:
            await asyncio.sleep(REFUSED_PUBLISH_WAIT_SECONDS)
            raise TransientJobError("the report's job is no longer this worker's to finish")
    except BaseException as exc:
        await attempt.abandon()
        if isinstance(exc, storage.ReportTooLarge):
            raise PermanentJobError(str(exc)) from None
        raise
    log.info(
        "report generated",
        extra={"report_id": str(report_id), "rows": row_count, "bytes": file.size},
    )
    return {
        "report": f"/api/v1/reports/{report_id}",
        "download": f"/api/v1/reports/{report_id}/download",
        "row_count": row_count,
        "size_bytes": file.size,
        "totals": _overall(summary.totals),
    }


class _Attempt:
    """One attempt at one report: its blob (invisible until published), the converter and the
    chart it may have running, and the steps ``generate_report`` takes in order."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        report_id: uuid.UUID,
        request: queries.AnyRequest,
        settings: ReportSettings,
        progress: Progress,
    ) -> None:
        self.pool = pool
        self.report_id = report_id
        self.request = request
        self.definition = queries.definition(request)
        self.settings = settings
        self.progress = progress
        self.blob_id = uuid.uuid4()
        self.generated_at = datetime.now(UTC)
        self.converter: asyncio.subprocess.Process | None = None
        self.charting: asyncio.Task[bytes] | None = None

    async def stream_rows(self, file: storage.ChunkWriter) -> tuple[int, queries.Summary]:
        """Query and stream: the rows go into ``file`` while the totals aggregate on a second
        connection in the same snapshot and the chart is drawn from them; the number of rows
        and the summary."""
        pool, definition = self.pool, self.definition
        async with (
            pool.acquire() as read_conn,
            read_conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            snapshot: str = await read_conn.fetchval("SELECT pg_export_snapshot()")
            summarising = asyncio.create_task(_summarise(pool, snapshot, definition))
            days = (
                [args[0] for args in definition.slices()]
                if definition.kind is ReportKind.movements
                else []
            )
            tracker = _RowProgress(self.progress, 5, 95, days)
            summarising.add_done_callback(tracker.learn)
            # The chart needs only the totals: it is drawn while the rows still stream.
            self.charting = asyncio.create_task(
                _draw_chart(summarising, self.request, self.generated_at)
            )
            try:
                await self.progress(5, force=True)
                tracker.estimate(await queries.estimate_rows(read_conn, definition))
                return await self._store_rows(read_conn, file, tracker, summarising)
            finally:
                if not summarising.done():
                    summarising.cancel()
                    with contextlib.suppress(BaseException):
                        await summarising

    async def _store_rows(
        self,
        read_conn: Any,
        file: storage.ChunkWriter,
        tracker: _RowProgress,
        summarising: asyncio.Task[queries.Summary],
    ) -> tuple[int, queries.Summary]:
        """CSV is PostgreSQL's own output, stored as it arrives; JSON and XLSX are rendered on
        the way by the converter, a child process."""
        if self.request.format is not ReportFormat.csv:
            self.converter = await _spawn("convert")
            header = self._converter_header()
            return await _convert(
                self.pool,
                read_conn,
                self.definition,
                self.converter,
                header,
                file,
                tracker,
                summarising,
            )

        async def to_storage(data: bytes) -> None:
            await file.write(data)
            await tracker.feed(data)

        sink = _CopySink(self.pool, read_conn.get_server_pid(), to_storage)
        row_count = await sink.copy_rows(read_conn, self.definition, for_spreadsheets=True)
        return row_count, await summarising

    def _converter_header(self) -> dict[str, Any]:
        """The converter's first line: what to render and around which document."""
        definition = self.definition
        return {
            "format": self.request.format.value,
            "columns": definition.columns,
            "document": {
                "kind": definition.kind.value,
                "generated_at": self.generated_at.isoformat(),
                "params": job_payload(self.request)["params"],
            },
            "sheet_names": [definition.sheet_name, "Totals"],
        }

    async def store_chart(self, write_conn: Any) -> int:
        """Store the chart drawn while the rows streamed; its size in bytes."""
        assert self.charting is not None
        png = await self.charting
        chart = storage.ChunkWriter(write_conn, self.report_id, self.blob_id, storage.PART_CHART)
        await chart.write(png)
        await chart.close()
        return chart.size

    async def publish(
        self,
        write_conn: Any,
        worker_id: str,
        generation: int,
        size_bytes: int,
        chart_bytes: int,
        row_count: int,
        summary: queries.Summary,
    ) -> bool:
        """Make the file and chart visible in one transaction, if the job is still this
        attempt's (``worker_id`` and ``generation``); whether it was."""
        kind, fmt = self.definition.kind, self.request.format
        return await storage.publish(
            write_conn,
            self.report_id,
            worker_id,
            generation,
            storage.Published(
                blob_id=self.blob_id,
                filename=filename(kind, fmt, self.report_id, self.generated_at),
                content_type=CONTENT_TYPES[fmt],
                row_count=row_count,
                size_bytes=size_bytes,
                chart_bytes=chart_bytes,
                totals=summary.totals,
                generated_at=self.generated_at,
                retention_hours=self.settings.retention_hours,
            ),
        )

    async def abandon(self) -> None:
        """After a failure or a cancellation: stop the converter and this report's chart,
        delete what this attempt stored (nothing of it was published)."""
        await _kill(self.converter)
        if self.charting is not None:  # a chart being drawn for this report stops its renderer
            self.charting.cancel()
            with contextlib.suppress(BaseException):
                await self.charting
        with contextlib.suppress(Exception):
            async with self.pool.acquire() as conn:
                await storage.discard_blob(conn, self.report_id, self.blob_id)


def _overall(totals: dict[str, Any]) -> dict[str, Any]:
    """The totals without their breakdowns (those are in the file)."""
    return {k: v for k, v in totals.items() if not isinstance(v, list)}


async def _convert(
    pool: asyncpg.Pool,
    read_conn: Any,
    definition: queries.Definition,
    proc: asyncio.subprocess.Process,
    header: dict[str, Any],
    file: storage.ChunkWriter,
    tracker: _RowProgress,
    summarising: asyncio.Task[queries.Summary],
) -> tuple[int, queries.Summary]:
    """Stream the rows as CSV into the converter, then the totals (after a NUL, which CSV from
    PostgreSQL never holds), and its output into storage; returns the number of rows and the
    summary."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def pump() -> None:
        while chunk := await stdout.read(storage.CHUNK_BYTES):
            await file.write(chunk)

    pumping = asyncio.create_task(pump())
    errors = asyncio.create_task(stderr.read())
    # A failed pump (the size cap) stops the child, which breaks the pipe and the COPY.
    pumping.add_done_callback(
        lambda t: (
            proc.kill() if not t.cancelled() and t.exception() and proc.returncode is None else None
        )
    )

    async def to_converter(data: bytes) -> None:
        stdin.write(data)
        await stdin.drain()
        await tracker.feed(data)

    try:
        stdin.write(json.dumps(header).encode() + b"\n")
        rows = await _CopySink(pool, read_conn.get_server_pid(), to_converter).copy_rows(
            read_conn, definition
        )
        summary = await summarising
        trailer = {
            "totals": summary.totals,
            "totals_sheet": summary.sheet,
            "totals_columns": summary.sheet_columns,
        }
        stdin.write(b"\x00" + json.dumps(trailer).encode())
        await stdin.drain()
        stdin.close()
        await pumping
        await proc.wait()
        message = await errors
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        failure = pumping.exception() if pumping.done() and not pumping.cancelled() else None
        if failure is not None and failure is not exc:
            raise failure from None
        if proc.returncode == EXIT_DOES_NOT_FIT:
            raise PermanentJobError(_last_line(await errors)) from None
        raise
    finally:
        for task in (pumping, errors):
            if not task.done():
                task.cancel()
    if proc.returncode == EXIT_DOES_NOT_FIT:
        raise PermanentJobError(_last_line(message))
    if proc.returncode != 0:
        raise PermanentJobError(f"the report could not be rendered: {_last_line(message)}")
    return rows, summary
