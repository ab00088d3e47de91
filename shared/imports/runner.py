"""Bulk imports, the worker's side: read the upload, validate every line, apply the valid
ones as restocks — set-based, in bounded memory, exactly once.

- The lines are parsed a chunk at a time (``shared.imports.csv_lines``) and COPYed into a
  temporary table on the import's own connection; SKUs and locations are resolved with joins.
- Lines are applied in batches of line numbers (all of them in one for ``atomic``): a batch
  increments the stock levels it touches in one statement, in ``lock_order`` (SKU, location
  code) as batches and transfers do, and appends one ledger movement per line.
- Exactly once: ``import_runs`` holds, per upload, the lines applied so far. A batch's
  transaction first advances it, naming the job, its generation and the line it expects to
  start after (a compare-and-set), then writes the batch: a copy of the job that is no longer
  the current claim, or a second run of a batch already committed, changes nothing. A run
  claims the record for its job and generation before it starts, so an older copy still
  running is fenced off at its next batch. A re-run after a crash resumes after the last batch
  committed; so does a retry of a failed or cancelled import (``POST /jobs/{id}/retry``: a new
  job, the same upload), once the job it retries is over.
- The end is one more fenced transaction: the result, the import's one audit event, and the
  upload's file deleted. A re-run after it returns the stored result.
- An import that ended without completing keeps its file for ``IMPORT_UPLOAD_RETENTION_HOURS``
  (for a retry), then the worker's purge deletes it (``service.purge_abandoned_uploads``); a
  retry after that fails at once, saying so.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.audit.events import record_event
from shared.db.connection import Connection
from shared.db.database import Database
from shared.db.unit_of_work import Actor, NewJob, UnitOfWork
from shared.imports.csv_lines import ReadProgress, parse_upload
from shared.imports.service import ImportMode, iter_upload
from shared.jobs.retry import PermanentJobError

MAX_ERRORS_LISTED = 1000
PER_LINE_BATCH = 10_000
Progress = Callable[[int], Awaitable[None]]


class ImportSuperseded(Exception):
    """A newer claim of this import job runs it: this copy must stop, having changed nothing."""


@dataclass(frozen=True, slots=True)
class ImportJob:
    job_id: uuid.UUID
    generation: int
    upload_id: uuid.UUID
    mode: ImportMode
    size_bytes: int
    actor: Actor
    job_max_tries: int

    @classmethod
    def from_payload(
        cls,
        job_id: uuid.UUID,
        generation: int,
        payload: dict[str, Any],
        request_id: str | None,
        job_max_tries: int,
    ) -> ImportJob:
        actor = payload.get("actor") or {}
        key_id = actor.get("key_id")
        return cls(
            job_id=job_id,
            generation=generation,
            upload_id=uuid.UUID(payload["upload_id"]),
            mode=ImportMode(payload["mode"]),
            size_bytes=int(payload["size_bytes"]),
            actor=Actor(uuid.UUID(key_id) if key_id else None, actor.get("name"), request_id),
            job_max_tries=job_max_tries,
        )


@dataclass(slots=True)
class ImportOutcome:
    result: dict[str, Any]
    new_jobs: list[NewJob] = field(default_factory=list)  # the audit event, to wake its drain


@dataclass(slots=True)
class _Run:
    lines_done: int
    errors_listed: int
    result: dict[str, Any] | None


# The upload's run record, taken over by this claim: by a newer generation of its job (the
# older copy's next batch finds the generation changed), or by another job — a retry of a
# failed or cancelled import, which resumes where that one stopped — once the job holding it
# is over. No row: this claim must not run.
_CLAIM_RUN = """
INSERT INTO import_runs AS r (upload_id, job_id, generation) VALUES ($1, $2, $3)
ON CONFLICT (upload_id) DO UPDATE SET job_id = excluded.job_id, generation = excluded.generation
    WHERE CASE WHEN r.job_id = excluded.job_id THEN r.generation <= excluded.generation
          ELSE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = r.job_id
                           AND j.status IN ('queued', 'in_progress')) END
RETURNING lines_done, jsonb_array_length(errors) AS errors_listed, result
"""

_LINES_TABLE = """
CREATE TEMPORARY TABLE import_lines (
    line integer PRIMARY KEY, sku text, location_code text, quantity bigint,
    reference text, note text, reason text, product_id bigint, location_id integer
)
"""
_DROP_LINES = "DROP TABLE IF EXISTS pg_temp.import_lines"
_COPY_COLUMNS = ["line", "sku", "location_code", "quantity", "reference", "note", "reason"]

# Unknown SKUs and locations, archived products: set-based, once for the whole file.
_RESOLVE = (
    """
    UPDATE import_lines t SET product_id = p.id,
        reason = CASE WHEN p.archived_at IS NOT NULL THEN 'product ' || t.sku || ' is archived' END
    FROM products p WHERE p.sku = t.sku AND t.reason IS NULL
    """,
    """
    UPDATE import_lines t SET location_id = l.id
    FROM locations l WHERE l.code = t.location_code AND t.reason IS NULL
    """,
    """
    UPDATE import_lines SET reason = CASE WHEN product_id IS NULL THEN 'unknown SKU ' || sku
        ELSE 'unknown location ' || location_code END
    WHERE reason IS NULL AND (product_id IS NULL OR location_id IS NULL)
    """,
    "ANALYZE import_lines",
)

_ADVANCE = """
UPDATE import_runs SET lines_done = $4, applied = applied + $5, rejected = rejected + $6,
    errors = errors || $7::jsonb
WHERE upload_id = $8 AND job_id = $1 AND generation = $2 AND lines_done = $3
  AND result IS NULL
"""

_BATCH_COUNTS = """
SELECT count(*) FILTER (WHERE reason IS NULL) AS valid,
       count(*) FILTER (WHERE reason IS NOT NULL) AS rejected
FROM import_lines WHERE line > $1 AND line <= $2
"""

_BATCH_ERRORS = """
SELECT line, sku, reason FROM import_lines
WHERE reason IS NOT NULL AND line > $1 AND line <= $2 ORDER BY line LIMIT $3
"""

_INCREMENT_LEVELS = """
INSERT INTO stock_levels AS s (product_id, location_id, quantity, updated_at)
SELECT product_id, location_id, sum(quantity), now() FROM import_lines
WHERE reason IS NULL AND line > $1 AND line <= $2
GROUP BY product_id, location_id, sku, location_code
ORDER BY sku, location_code
ON CONFLICT (product_id, location_id)
DO UPDATE SET quantity = s.quantity + excluded.quantity, updated_at = excluded.updated_at
"""

_APPEND_MOVEMENTS = """
INSERT INTO movements
    (product_id, location_id, delta, reason, reference, note, actor_key_id, request_id)
SELECT product_id, location_id, quantity, 'restock', coalesce(reference, $3), note, $4, $5
FROM import_lines WHERE reason IS NULL AND line > $1 AND line <= $2 ORDER BY line
"""

_FINISH = """
UPDATE import_runs SET result = jsonb_build_object(
    'lines', $4::int, 'applied', applied, 'rejected', rejected, 'errors', errors)
WHERE upload_id = $3 AND job_id = $1 AND generation = $2 AND result IS NULL
RETURNING result
"""


_UPLOAD_KEPT = "SELECT EXISTS (SELECT FROM import_chunks WHERE upload_id = $1 AND seq = 0)"


async def run_import(db: Database, job: ImportJob, progress: Progress) -> ImportOutcome:
    """Run (or resume, or finish) one import job; see the module."""
    async with db.acquire() as conn:
        run = await _claim(conn, job)
        if run.result is not None:
            return ImportOutcome(run.result)
        if not await conn.fetchval(_UPLOAD_KEPT, job.upload_id):
            raise PermanentJobError(
                "the upload's file was purged (IMPORT_UPLOAD_RETENTION_HOURS after its import"
                " ended without completing): upload the file again"
            )
        await conn.execute(_DROP_LINES)  # left by a run that was cancelled on this connection
        await conn.execute(_LINES_TABLE)
        try:
            lines, last_line = await _load(conn, db, job, progress)
            for statement in _RESOLVE:
                await conn.execute(statement)
            await _apply(conn, job, run, last_line, progress)
            outcome = await _finish(conn, job, lines)
        except Exception:
            with contextlib.suppress(Exception):  # the error is the one to report
                await conn.execute(_DROP_LINES)
            raise
        # (not on a cancellation: the connection may be mid-statement; the next run drops it)
        await conn.execute(_DROP_LINES)
        return outcome


async def _claim(conn: Connection, job: ImportJob) -> _Run:
    row = await conn.fetchrow(_CLAIM_RUN, job.upload_id, job.job_id, job.generation)
    if row is None:
        raise ImportSuperseded(f"import {job.job_id} is run by a newer claim")
    return _Run(row["lines_done"], row["errors_listed"], row["result"])


async def _load(
    conn: Connection, db: Database, job: ImportJob, progress: Progress
) -> tuple[int, int]:
    """Parse the upload into ``import_lines``; returns (data lines, last line number).
    Reading is the first half of the progress bar."""
    read = ReadProgress()
    last_line = 0

    async def records() -> Any:
        nonlocal last_line
        async for parsed in parse_upload(iter_upload(db, job.upload_id), read):
            last_line = parsed.line
            if read.lines % 5000 == 0:
                await progress(50 * read.bytes_read // max(1, job.size_bytes))
            yield parsed.as_record()

    await conn.copy_records_to_table("import_lines", records=records(), columns=_COPY_COLUMNS)
    await progress(50)
    return read.lines, last_line


async def _apply(
    conn: Connection, job: ImportJob, run: _Run, last_line: int, progress: Progress
) -> None:
    """The batches after ``run.lines_done``. ``atomic``: nothing when any line is rejected,
    else every line in one batch."""
    if job.mode is ImportMode.atomic:
        counts = await conn.fetchrow(_BATCH_COUNTS, run.lines_done, last_line)
        assert counts is not None
        if counts["rejected"]:
            await _advance(conn, job, run, last_line, apply=False)
            return
        step = max(1, last_line)
    else:
        step = PER_LINE_BATCH
    while run.lines_done < last_line:
        await _advance(conn, job, run, min(last_line, run.lines_done + step), apply=True)
        await progress(50 + 50 * run.lines_done // max(1, last_line))


async def _advance(
    conn: Connection, job: ImportJob, run: _Run, through: int, *, apply: bool
) -> None:
    """One fenced batch: lines ``(run.lines_done, through]`` counted, their errors listed (up
    to the cap), and with ``apply`` their valid lines applied — or nothing at all."""
    start = run.lines_done
    async with conn.transaction():
        counts = await conn.fetchrow(_BATCH_COUNTS, start, through)
        assert counts is not None
        applied = counts["valid"] if apply else 0
        room = MAX_ERRORS_LISTED - run.errors_listed
        errors = [dict(r) for r in await conn.fetch(_BATCH_ERRORS, start, through, room)]
        status = await conn.execute(
            _ADVANCE,
            job.job_id,
            job.generation,
            start,
            through,
            applied,
            counts["rejected"],
            errors,
            job.upload_id,
        )
        if status != "UPDATE 1":
            raise ImportSuperseded(f"import {job.job_id} was advanced by another claim")
        if applied:
            # the ledger first: the levels' row locks, which restocks of the same SKUs wait
            # for, are then held only for the last statement and the commit
            await conn.execute(
                _APPEND_MOVEMENTS,
                start,
                through,
                f"import:{job.job_id}",
                job.actor.key_id,
                job.actor.request_id,
            )
            await conn.execute(_INCREMENT_LEVELS, start, through)
    run.lines_done = through
    run.errors_listed += len(errors)


async def _finish(conn: Connection, job: ImportJob, lines: int) -> ImportOutcome:
    """The result, the one audit event, the upload's file deleted: fenced like a batch."""
    async with conn.transaction():
        result: dict[str, Any] | None = await conn.fetchval(
            _FINISH, job.job_id, job.generation, job.upload_id, lines
        )
        if result is None:
            raise ImportSuperseded(f"import {job.job_id} was finished by another claim")
        uow = UnitOfWork(conn, job.actor, job_max_tries=job.job_max_tries)
        summary = {k: result[k] for k in ("lines", "applied", "rejected")}
        await record_event(
            uow,
            "inventory.imported",
            f"import:{job.job_id}",
            [],
            {"job_id": str(job.job_id), "mode": job.mode.value, **summary},
        )
        await conn.execute("DELETE FROM import_chunks WHERE upload_id = $1", job.upload_id)
    return ImportOutcome(result, uow.new_jobs)
