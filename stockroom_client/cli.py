"""``stockroom-client``: the client from a shell — for people (rich tables and progress bars
on a terminal) and for scripts (``--json``). Exit status 0 on success, 1 when the request
failed (its problem's title and detail on stderr, never a traceback), 2 for a usage error."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from stockroom_client.client import Client
from stockroom_client.errors import (
    ApiError,
    JobFailed,
    StockroomError,
    ValidationFailed,
)
from stockroom_client.models import AuditEntry, ImportResult, Job, JobStatus
from stockroom_client.retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FOLLOW_EVERY_SECONDS = 2.0


class Output:
    """Where results go: JSON on stdout (``--json``), or rich output for people."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console()
        self.errors = Console(stderr=True)

    def json(self, value: Any) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        print(json.dumps(value, indent=None if not sys.stdout.isatty() else 2), flush=True)

    def progress(self, what: str) -> tuple[AbstractContextManager[Any], Callable[[Job], None]]:
        """A progress bar following a job's ``progress`` (only on a terminal, not ``--json``)."""
        if self.as_json or not self.console.is_terminal:
            return nullcontext(), lambda job: None
        bar = Progress(
            TextColumn(f"[bold]{what}[/]"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        task = bar.add_task(what, total=100, status="queued")

        def update(job: Job) -> None:
            bar.update(task, completed=job.progress, status=job.status)

        return bar, update


def _job_table(jobs: Sequence[Job]) -> Table:
    table = Table("id", "kind", "status", "progress", "attempts", "created", "error")
    colours = {"complete": "green", "failed": "red", "cancelled": "yellow"}
    for job in jobs:
        colour = colours.get(job.status, "cyan")
        table.add_row(
            str(job.id),
            job.kind,
            f"[{colour}]{job.status}[/]",
            f"{job.progress}%",
            f"{job.attempts}/{job.max_attempts}",
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            (job.error or "")[:60],
        )
    return table


def _show_job(out: Output, job: Job) -> None:
    if out.as_json:
        out.json(job)
        return
    out.console.print(_job_table([job]))
    if job.result:
        out.console.print_json(data=job.result)


# --- commands --------------------------------------------------------------------------------


def cmd_restock(client: Client, out: Output, args: argparse.Namespace) -> int:
    result = client.restock(
        args.sku, args.quantity, location_code=args.location, reference=args.reference
    )
    if out.as_json:
        out.json(result)
    else:
        out.console.print(
            f"[green]Restocked[/] {result.movement.delta} x {result.stock.sku} at "
            f"{result.stock.location_code}: now [bold]{result.stock.quantity}[/]"
            f" (movement {result.movement.id})"
        )
    return EXIT_OK


def cmd_import(client: Client, out: Output, args: argparse.Namespace) -> int:
    content = Path(args.file).read_bytes()
    job = client.import_csv(content, mode=args.mode)
    bar, update = out.progress(f"import {Path(args.file).name}")
    with bar:
        try:
            job = client.wait_for_job(job.id, timeout=args.timeout, on_update=update)
        except JobFailed as exc:
            _show_job(out, exc.job)
            raise
    result = ImportResult.model_validate(job.result)
    if out.as_json:
        out.json({"job_id": str(job.id), **result.model_dump(mode="json")})
    else:
        summary = Table("lines", "applied", "rejected", title=f"Import {job.id} ({args.mode})")
        summary.add_row(str(result.lines), f"[green]{result.applied}[/]", _red(result.rejected))
        out.console.print(summary)
        if result.errors:
            errors = Table("line", "sku", "reason", title="Rejected lines")
            for error in result.errors:
                errors.add_row(str(error.line), error.sku or "", error.reason)
            out.console.print(errors)
    return EXIT_FAILED if result.rejected else EXIT_OK


def _red(count: int) -> str:
    return f"[red]{count}[/]" if count else "0"


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--param takes name=value, not {pair!r}")
        params[name] = value
    return params


def cmd_report(client: Client, out: Output, args: argparse.Namespace) -> int:
    job = client.request_report(args.kind, args.format, _params(args.param))
    bar, update = out.progress(f"{args.kind} report")
    with bar:
        job = client.wait_for_job(job.id, timeout=args.timeout, on_update=update)
    path = Path(args.out or f"{args.kind}-{job.id}.{args.format}")
    client.download_report(job.id, path)
    size = path.stat().st_size
    if out.as_json:
        out.json({"report_id": str(job.id), "path": str(path), "size_bytes": size})
    else:
        out.console.print(f"[green]Saved[/] {path} ({size:,} bytes)")
    return EXIT_OK


def cmd_job(client: Client, out: Output, args: argparse.Namespace) -> int:
    _show_job(out, client.get_job(args.id))
    return EXIT_OK


def cmd_jobs(client: Client, out: Output, args: argparse.Namespace) -> int:
    status: JobStatus | None = "failed" if args.failed else args.status
    page = client.list_jobs(status=status, kind=args.kind, limit=args.limit)
    if out.as_json:
        out.json(page)
    else:
        out.console.print(_job_table(page.items))
    return EXIT_OK


def cmd_retry(client: Client, out: Output, args: argparse.Namespace) -> int:
    _show_job(out, client.retry_job(args.id))
    return EXIT_OK


def cmd_cancel(client: Client, out: Output, args: argparse.Namespace) -> int:
    _show_job(out, client.cancel_job(args.id))
    return EXIT_OK


def _audit_table(entries: Sequence[AuditEntry]) -> Table:
    table = Table("id", "at", "action", "actor", "subject")
    for e in entries:
        at = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(e.id), at, e.action, e.actor.name or "", e.subject or "")
    return table


def _print_audit(out: Output, entries: Sequence[AuditEntry]) -> None:
    if out.as_json:
        for entry in entries:  # one object per line: a stream a script can read
            print(entry.model_dump_json(), flush=True)
    elif entries:
        out.console.print(_audit_table(entries))


def cmd_audit(client: Client, out: Output, args: argparse.Namespace) -> int:
    page = client.list_audit(action=args.action, sku=args.sku, limit=args.limit)
    entries = list(reversed(page.items))  # oldest first, as a log reads
    if not args.follow:
        if out.as_json:
            out.json(page)
        else:
            out.console.print(_audit_table(entries))
        return EXIT_OK
    _print_audit(out, entries)
    seen = {e.id for e in entries}
    since: datetime | None = entries[-1].created_at if entries else None
    while True:
        time.sleep(FOLLOW_EVERY_SECONDS)
        newer = client.list_audit(action=args.action, sku=args.sku, since=since, limit=100)
        fresh = [e for e in reversed(newer.items) if e.id not in seen]
        _print_audit(out, fresh)
        seen.update(e.id for e in fresh)
        if fresh:
            since = fresh[-1].created_at


COMMANDS: dict[str, Callable[[Client, Output, argparse.Namespace], int]] = {
    "restock": cmd_restock,
    "import": cmd_import,
    "report": cmd_report,
    "job": cmd_job,
    "jobs": cmd_jobs,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "audit": cmd_audit,
}


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stockroom-client", description=__doc__)
    p.add_argument("--url", default=os.environ.get("STOCKROOM_URL", DEFAULT_URL))
    p.add_argument(
        "--key", default=os.environ.get("STOCKROOM_API_KEY"), help="or STOCKROOM_API_KEY"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP attempt")
    p.add_argument("--attempts", type=int, default=4, help="tries per request (retries + 1)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("restock", help="add stock")
    s.add_argument("sku")
    s.add_argument("quantity", type=int)
    s.add_argument("--location")
    s.add_argument("--reference")

    s = sub.add_parser("import", help="import a CSV of restocks, following its job")
    s.add_argument("file")
    s.add_argument("--mode", choices=["atomic", "per_line"], default="atomic")
    s.add_argument("--wait", dest="timeout", type=float, default=3600.0, help="seconds")

    s = sub.add_parser("report", help="generate a report and download it")
    s.add_argument("kind", choices=["valuation", "movements", "low_stock"])
    s.add_argument("--format", required=True, choices=["csv", "json", "xlsx"])
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--out", help="file to write (default: KIND-ID.FORMAT)")
    s.add_argument("--wait", dest="timeout", type=float, default=3600.0, help="seconds")

    for name, what in (("job", "show a job"), ("retry", "retry a job"), ("cancel", "cancel a job")):
        sub.add_parser(name, help=what).add_argument("id")

    s = sub.add_parser("jobs", help="list jobs, newest first")
    s.add_argument("--failed", action="store_true", help="the dead-letter view")
    s.add_argument("--status", choices=["queued", "in_progress", "complete", "failed", "cancelled"])
    s.add_argument("--kind")
    s.add_argument("--limit", type=int, default=20)

    s = sub.add_parser("audit", help="the audit log")
    s.add_argument("--follow", action="store_true", help="keep printing new entries")
    s.add_argument("--action")
    s.add_argument("--sku")
    s.add_argument("--limit", type=int, default=20)
    return p


def _print_error(out: Output, exc: StockroomError) -> None:
    if out.as_json:
        body = exc.problem if isinstance(exc, ApiError) else {"title": type(exc).__name__}
        if not isinstance(exc, ApiError):
            body["detail"] = str(exc)
        print(json.dumps({"error": body}), file=sys.stderr)
        return
    if isinstance(exc, ApiError):
        out.errors.print(f"[red]error:[/] {exc.title}: {exc.detail}", highlight=False)
        if isinstance(exc, ValidationFailed):
            for err in exc.errors:
                loc = ".".join(str(part) for part in err.get("loc", []))
                out.errors.print(f"  {loc}: {err.get('msg')}", highlight=False)
    else:
        out.errors.print(f"[red]error:[/] {exc}", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on a usage error
    out = Output(args.json)
    try:
        with Client(
            args.url, args.key, timeout=args.timeout, retry=RetryPolicy(attempts=args.attempts)
        ) as client:
            return COMMANDS[args.command](client, out, args)
    except UsageError as exc:
        out.errors.print(f"[red]usage:[/] {exc}", highlight=False)
        return EXIT_USAGE
    except StockroomError as exc:
        _print_error(out, exc)
        return EXIT_FAILED
    except OSError as exc:  # the CSV to upload, the file to write
        out.errors.print(f"[red]error:[/] {exc}", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
