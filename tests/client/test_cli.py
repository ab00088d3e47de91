"""``stockroom-client`` against a real API process, run from a venv holding only httpx,
pydantic and rich: exit statuses, ``--json`` output, errors without tracebacks."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.db.database import Database
from stockroom_client import AsyncClient
from tests.client.conftest import REPO, on_hand
from tests.worker_support import WorkerFactory


@dataclass(frozen=True)
class Cli:
    """``stockroom-client`` in the venv holding only httpx, pydantic and rich."""

    python: Path
    url: str
    key: str
    cwd: Path

    def command(self, *args: str, url: str | None = None) -> list[str]:
        return [str(self.python), "-m", "stockroom_client.cli", "--url", url or self.url, *args]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "STOCKROOM_API_KEY": self.key,
            **extra,
        }

    def __call__(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args, url=url),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.cwd,
            timeout=120,
        )


@pytest.fixture
def cli(client_only_python: Path, api_url: str, key: str, tmp_path: Path) -> Cli:
    return Cli(client_only_python, api_url, key, tmp_path)


async def test_restock_prints_json_for_scripts_and_text_for_people(
    cli: Cli, db: Database, products: list[str]
) -> None:
    done = cli("--json", "restock", "BOLT-M8", "5", "--reference", "po-9")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["stock"]["quantity"] == 5 and answer["movement"]["reference"] == "po-9"
    human = cli("restock", "BOLT-M8", "2", "--location", "DOCK-2")
    assert human.returncode == 0, human.stderr
    assert "Restocked 2 x BOLT-M8 at DOCK-2: now 2" in human.stdout
    assert "\x1b[" not in human.stdout  # no colours when stdout is not a terminal
    assert await on_hand(db, "BOLT-M8") == 7


async def test_a_failed_request_exits_1_with_the_problem_and_no_traceback(
    cli: Cli, products: list[str]
) -> None:
    refused = cli("restock", "NOPE-1", "5")
    assert refused.returncode == 1
    assert "Unknown reference: unknown SKU NOPE-1" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    as_json = cli("--json", "job", "00000000-0000-4000-8000-000000000000")
    assert as_json.returncode == 1 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["status"] == 404
    unreachable = cli("--attempts", "1", "job", "x", url="http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "ConnectError" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("restock", "BOLT-M8", "five").returncode == 2
    assert cli("report", "valuation").returncode == 2  # --format is required
    assert cli("frobnicate").returncode == 2
    bad_param = cli("report", "valuation", "--format", "csv", "--param", "category")
    assert bad_param.returncode == 2 and "name=value" in bad_param.stderr


async def test_import_report_and_jobs_through_the_cli(
    cli: Cli,
    db: Database,
    products: list[str],
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    start_worker()
    (tmp_path / "delivery.csv").write_text("sku,quantity\nBOLT-M8,3\nNUT-M8,4\nNOPE-1,1\n")
    atomic = cli("--json", "import", "delivery.csv")
    assert atomic.returncode == 1, atomic.stderr  # a line was rejected: nothing applied
    summary = json.loads(atomic.stdout)
    assert (summary["applied"], summary["rejected"]) == (0, 1)
    assert summary["errors"] == [{"line": 4, "sku": "NOPE-1", "reason": "unknown SKU NOPE-1"}]
    per_line = cli("import", "delivery.csv", "--mode", "per_line")
    assert per_line.returncode == 1
    assert "Rejected lines" in per_line.stdout and "unknown SKU NOPE-1" in per_line.stdout
    assert await on_hand(db, "BOLT-M8") == 3 and await on_hand(db, "NUT-M8") == 4

    report = cli("--json", "report", "valuation", "--format", "csv", "--out", "v.csv")
    assert report.returncode == 0, report.stderr
    saved = json.loads(report.stdout)
    assert saved["path"] == "v.csv" and (tmp_path / "v.csv").stat().st_size == saved["size_bytes"]

    job = cli("--json", "job", saved["report_id"])
    assert job.returncode == 0 and json.loads(job.stdout)["status"] == "complete"
    failed = cli("--json", "jobs", "--failed")
    assert failed.returncode == 0 and json.loads(failed.stdout)["items"] == []
    imports = json.loads(cli("--json", "jobs", "--kind", "import").stdout)["items"]
    assert [j["status"] for j in imports] == ["complete", "complete"]
    retried = cli("--json", "retry", imports[0]["id"])
    assert retried.returncode == 1 and "job-state-conflict" in retried.stderr
    cancelled = cli("cancel", imports[0]["id"])  # complete: too late
    assert cancelled.returncode == 1
    assert "Job is not in a state that allows this" in cancelled.stderr
    audit = cli("--json", "audit", "--action", "inventory.imported")
    assert audit.returncode == 0


async def test_audit_follow_prints_new_entries_as_json_lines(
    cli: Cli, products: list[str], start_worker: WorkerFactory
) -> None:
    start_worker()
    follower = subprocess.Popen(
        cli.command("--json", "audit", "--follow", "--action", "inventory.restocked"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env(),
        cwd=cli.cwd,
    )
    try:
        async with AsyncClient(cli.url, cli.key) as sr:
            await sr.restock("BOLT-M8", 3, reference="followed")
        assert follower.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(follower.stdout.readline), 60)
        entry = json.loads(line)
        assert entry["action"] == "inventory.restocked"
        assert entry["payload"]["reference"] == "followed"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
    assert follower.returncode == 130
    assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")


async def test_on_a_terminal_an_import_shows_a_progress_bar_and_tables_in_colour(
    cli: Cli, products: list[str], start_worker: WorkerFactory
) -> None:
    start_worker()
    (cli.cwd / "d.csv").write_text("sku,quantity\nBOLT-M8,3\nNOPE-1,1\n")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        cli.command("import", "d.csv", "--mode", "per_line"),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli.env(TERM="xterm-256color", COLUMNS="120"),
        cwd=cli.cwd,
    )
    os.close(terminal)
    screen = bytearray()

    def read_all() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the terminal closed: the command is done
                return
            if not data:
                return
            screen.extend(data)

    await asyncio.wait_for(asyncio.to_thread(read_all), 90)
    os.close(controller)
    assert proc.wait(timeout=10) == 1  # a line was rejected
    text = screen.decode(errors="replace")
    assert "import d.csv" in text and "100%" in text  # the bar, finished
    assert "\x1b[" in text  # colours on a terminal
    assert "Rejected lines" in text and "unknown SKU NOPE-1" in text
