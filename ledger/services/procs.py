"""Local background services (the chain, the IPFS node): start, find, stop by PID.

A service lives in its own directory with ``service.json`` (pid, port, url, command)
and ``service.log``. ``start`` is idempotent and refuses a second instance on the
same directory; ``stop`` sends SIGTERM (so anvil writes its state) and waits, then
SIGKILL as a last resort. Servers listen on 127.0.0.1 unless given a host (ledger.services.listen).

Also what every long-running command shares: ``on_stop_signals`` (SIGINT, SIGTERM and
SIGHUP raise ``Stopped``, so the command unwinds and stops what it started) and
``hold_lock`` (one process per party and job, or per demo and data dir: an ``flock``
the kernel drops when the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ledger.errors import AlreadyRunning, LedgerError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceInfo:
    name: str
    pid: int
    port: int
    url: str
    command: list[str]
    started_at: float
    extra: dict = field(default_factory=dict)


# What a server needs from the caller's environment: where programs and home are,
# the locale and the time zone. Nothing else: the caller's environment holds
# LEDGER_PRIVATE_KEY, LEDGER_KEY_PASSWORD and whatever else its user exported.
SERVICE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def service_env(extra: dict | None = None) -> dict:
    """The environment a background server gets: ``SERVICE_ENV_KEYS`` from ours, plus ``extra``."""
    env = {k: os.environ[k] for k in SERVICE_ENV_KEYS if k in os.environ}
    env.update(extra or {})
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for us.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) arrived: unwind, stopping what this
    process started. ``stopped`` collects what the unwinding stopped, for the one line the
    command line prints (``ledger_cli.main``)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signame = signal.Signals(signum).name
        self.stopped: list[str] = []
        super().__init__(self.signame)


def on_stop_signals() -> Callable[[], None]:
    """From now on SIGINT, SIGTERM and SIGHUP raise ``Stopped`` in the main thread, once: a
    signal that comes while the process unwinds is ignored, so the unwinding (whose waits
    are bounded) stops everything it started. Returns a function that puts the previous
    handlers back. Off the main thread (signals cannot be handled there) it does nothing."""
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Stopped(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:          # not the main thread
        return lambda: None

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore


def hold_lock(path: Path, what: str):
    """An exclusive ``flock`` on ``path`` for as long as the returned file stays open
    (the life of the process: the kernel releases it when the process dies, so a kill -9
    leaves no stale lock). A second process is refused with ``AlreadyRunning`` naming
    the holder's pid, which the holder writes into the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise AlreadyRunning(f"{what} is already running as pid {holder} (lock {path}): one process at a time; "
                             f"stop that one first") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


class LocalService:
    """One background process owned by a directory."""

    def __init__(self, name: str, directory: Path):
        self.name = name
        # Absolute, because the process runs with its cwd here and a relative path in
        # its command line would be resolved against that cwd.
        self.dir = Path(directory).resolve()
        self.info_file = self.dir / "service.json"
        self.log_file = self.dir / "service.log"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def recorded(self) -> ServiceInfo | None:
        """What service.json says, whether or not the process still runs."""
        try:
            return ServiceInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> ServiceInfo | None:
        """The recorded service if its process is alive and is still our command."""
        info = self.recorded()
        if info is None or not pid_alive(info.pid):
            return None
        cmd = _cmdline(info.pid)
        if cmd and info.command and Path(cmd[0]).name != Path(info.command[0]).name:
            return None  # the PID was recycled by an unrelated process
        return info

    def start(
        self,
        command: list[str],
        ready_pattern: str,
        url_for_port: Callable[[int], str],
        timeout: float = 30.0,
        env: dict | None = None,
        extra: dict | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> tuple[ServiceInfo, bool]:
        """Start ``command`` unless already running. Returns (info, started_now).

        ``ready_pattern`` is a regex with one group, the port, matched in the log.
        ``prepare`` runs under the lock, only when the process is about to be started
        (e.g. to check or repair files the process will read).
        """
        with self._lock():
            info = self.running()
            if info is not None:
                return info, False
            if prepare is not None:
                prepare()
            log = open(self.log_file, "ab")
            offset = log.tell()
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env if env is not None else service_env(),
                start_new_session=True,  # survives the CLI exiting; not killed by the terminal's Ctrl-C
            )
            log.close()
            deadline = time.monotonic() + timeout
            pattern = re.compile(ready_pattern)
            port = None
            try:
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        raise LedgerError(
                            f"{self.name} exited at start (code {proc.returncode}); "
                            f"see {self.log_file}: {self._tail(offset)}"
                        )
                    m = pattern.search(self._read_from(offset))
                    if m:
                        port = int(m.group(1))
                        break
                    time.sleep(0.05)
            except BaseException:
                # Stopped (a signal: procs.Stopped, Ctrl-C) before it was recorded: nobody
                # else could find it by its service.json, so stop it here.
                _terminate(proc.pid, 5)
                raise
            if port is None:
                _terminate(proc.pid, 5)
                raise LedgerError(f"{self.name} did not become ready in {timeout:.0f}s; see {self.log_file}")
            info = ServiceInfo(
                name=self.name,
                pid=proc.pid,
                port=port,
                url=url_for_port(port),
                command=command,
                started_at=time.time(),
                extra=extra or {},
            )
            tmp = self.info_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(info), indent=2))
            os.replace(tmp, self.info_file)
            return info, True

    def stop(self, timeout: float = 15.0) -> ServiceInfo | None:
        """Stop by PID (SIGTERM, then SIGKILL after ``timeout``). Returns what was stopped.
        A folder that does not exist holds no service: nothing is created to find that out."""
        if not self.dir.is_dir():
            return None
        with self._lock():
            info = self.running()
            if info is not None:
                _terminate(info.pid, timeout)
            try:
                self.info_file.unlink()
            except FileNotFoundError:
                pass
            return info

    def _read_from(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _tail(self, offset: int) -> str:
        lines = [l for l in self._read_from(offset).splitlines() if l.strip()]
        return " | ".join(lines[-3:]) or "(no output)"


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass  # not our child: poll
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
