"""Listen addresses of `ledger chain up` / `ledger ipfs up --host`: loopback by default,
a loud warning naming what another address exposes, a one-line error for a name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli_env
from ledger.services import listen
from ledger.errors import ConfigError


def test_check_host_and_exposure():
    assert listen.check_host(None) == "127.0.0.1"
    assert listen.check_host(" [::1] ") == "::1"
    with pytest.raises(ConfigError, match="not an IP address"):
        listen.check_host("chain.example")
    assert listen.exposure("chain", "127.0.0.1", 8545) is None
    assert listen.exposure("ipfs", "::1", 5001) is None
    w = listen.exposure("chain", "0.0.0.0", 8545)
    assert w.startswith("WARNING") and "EVERY network interface" in w and "JSON-RPC" in w
    w = listen.exposure("ipfs", "10.1.2.3", 5001)
    assert "10.1.2.3" in w and "no authentication" in w
    assert listen.url_host("0.0.0.0") == "127.0.0.1" and listen.url_host("::") == "[::1]"
    assert listen.url_host("fd00::1") == "[fd00::1]"


@pytest.mark.parametrize("group", ["chain", "ipfs"])
def test_cli_refuses_a_host_name_in_one_line(settings, group):
    r = subprocess.run([sys.executable, "-m", "ledger_cli", group, "up", "--host", "chain.example"],
                       capture_output=True, text=True, timeout=60, env=cli_env(settings))
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "not an IP address" in lines[0], r.stderr
    assert not (settings.data_dir / group / "service.json").exists()
