"""The local chain: anvil from npm, persisted to disk, managed by PID.

``chain up`` starts anvil on 127.0.0.1 with ``--state`` (loaded at start, written on
SIGTERM) and ``--state-interval`` (written every N seconds, so a kill -9 loses at
most N seconds). anvil rewrites that file in place, so a kill during a dump leaves it
truncated: ``ledger.services.chainkeeper`` runs beside anvil and copies every complete dump to
``state.good.json``, and ``up`` restores the newest complete copy and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.services import listen
from ledger.services.chainkeeper import complete_json
from ledger.config import Settings
from ledger.errors import ConfigError
from ledger.services.procs import PROJECT_ROOT, LocalService, ServiceInfo, pid_alive, service_env

STATE_FILE = "state.json"
BACKUP_FILE = "state.backup.json"
GOOD_FILE = "state.good.json"      # the last complete interval dump (ledger.services.chainkeeper)
KEEPER_PID = "keeper.pid"


def anvil_binary() -> Path:
    override = os.environ.get("LEDGER_ANVIL")
    path = Path(override) if override else PROJECT_ROOT / "hardhat-config/node_modules/.bin/anvil"
    if not path.exists():
        raise ConfigError(
            f"anvil not found at {path}; run `make install` (npm ci in hardhat-config/) "
            "or set LEDGER_ANVIL to an anvil binary"
        )
    return path


def service(settings: Settings) -> LocalService:
    return LocalService("anvil", settings.chain_dir)


@dataclass
class ChainUp:
    info: ServiceInfo
    started: bool
    note: str = ""


def _valid_state(path: Path) -> bool:
    try:
        return complete_json(path.read_bytes())
    except OSError:
        return False


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def chain_up(settings: Settings, port: int | None = None, timeout: float = 30.0, host: str | None = None) -> ChainUp:
    """Start the local chain (idempotent). Returns its info and whether it was started now."""
    host = listen.check_host(host)
    svc = service(settings)
    running = svc.running()
    if running:
        return ChainUp(running, False)
    # Absolute: anvil runs with its cwd in the chain dir, so a relative --state path
    # (the default data dir is the relative `.ledger`) would point nowhere and
    # silently never be written.
    d = settings.chain_dir.resolve()
    d.mkdir(parents=True, exist_ok=True)
    state, backup = d / STATE_FILE, d / BACKUP_FILE
    notes: list[str] = []

    def prepare() -> None:
        # Under the service lock, so a concurrent `chain up` cannot race on these files.
        # anvil rewrites its state file in place, so a kill during a dump can leave it
        # truncated: keep a copy of the last good one and fall back to it.
        if not state.exists():
            return
        if _valid_state(state):
            _copy_atomic(state, backup)
            return
        good = d / GOOD_FILE
        copies = sorted((p for p in (good, backup) if p.exists() and _valid_state(p)),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        if copies:
            _copy_atomic(copies[0], state)
            notes.append(
                f"state file was unreadable (killed mid-write?); restored the last complete dump "
                f"({copies[0].name}, {time.ctime(copies[0].stat().st_mtime)})"
            )
        else:
            state.rename(d / f"state.corrupt.{int(time.time())}.json")
            notes.append(
                "state file was unreadable and no backup exists; started an empty chain (the bad file was kept aside)"
            )

    if port is None:
        port = settings.chain_port
    cmd = [
        str(anvil_binary()),
        "--host", host,
        "--port", str(port),
        "--state", str(state),
        "--state-interval", str(max(1, settings.state_interval)),
        # Transactions are mined at once (automine) AND an empty block comes every
        # block_time seconds, so chain time advances on an idle chain as on a real one:
        # a deadline passes on chain without anyone having to send a transaction.
        "--block-time", str(max(1, settings.block_time)),
        "--mixed-mining",
    ]
    info, started = svc.start(
        cmd,
        ready_pattern=r"Listening on \S+:(\d+)",
        url_for_port=lambda p: f"http://{listen.url_host(host)}:{p}",
        timeout=timeout,
        extra={"state_file": str(state), "host": host},
        prepare=prepare,
    )
    if started:
        _start_keeper(info.pid, state, d, settings.state_interval)
    return ChainUp(info, started, "; ".join(notes))


def _start_keeper(anvil_pid: int, state: Path, d: Path, interval: int) -> None:
    """``ledger.services.chainkeeper`` beside anvil: it keeps the last complete dump and exits with anvil."""
    period = min(0.5, max(1, interval) / 4)
    env = service_env({"PYTHONPATH": str(PROJECT_ROOT)})
    with open(d / "keeper.log", "ab") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "ledger.services.chainkeeper", "--pid", str(anvil_pid), "--state", str(state),
             "--good", str(d / GOOD_FILE), "--period", str(period)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d, env=env, start_new_session=True,
        )
    (d / KEEPER_PID).write_text(f"{p.pid}\n")


def chain_down(settings: Settings) -> ServiceInfo | None:
    """Stop the local chain by PID with SIGTERM so anvil writes its state."""
    stopped = service(settings).stop()
    _wait_keeper(settings.chain_dir.resolve())
    return stopped


def _wait_keeper(d: Path, timeout: float = 5.0) -> None:
    """The keeper copies anvil's last dump and exits once anvil is gone; wait for it (by PID)."""
    try:
        pid = int((d / KEEPER_PID).read_text())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            pass
        time.sleep(0.05)


def chain_status(settings: Settings) -> dict:
    """What is known about the local chain, without raising for a dead process."""
    svc = service(settings)
    state = settings.chain_dir / STATE_FILE
    out: dict = {"data_dir": str(settings.data_dir), "state_file": str(state)}
    if state.exists():
        out["state_saved_at"] = state.stat().st_mtime
        out["state_age_s"] = round(time.time() - state.stat().st_mtime, 1)
    info = svc.running()
    if info:
        out.update(running=True, pid=info.pid, url=info.url, port=info.port)
        return out
    recorded = svc.recorded()
    out["running"] = False
    if recorded:
        out["stale_pid"] = recorded.pid
        out["note"] = (
            f"anvil (pid {recorded.pid}) is no longer running but was not stopped with "
            "`ledger chain down` (killed?); history after the last state save is lost. "
            "Run `ledger chain up` to restart from the saved state."
        )
    return out


def local_rpc_url(settings: Settings) -> str | None:
    info = service(settings).running()
    return info.url if info else None
