"""The deployment files: compose.yaml is accepted by `docker compose config` (or the
standalone `docker-compose`), with every party a service of its own volume and secret,
and the Dockerfile copies only what exists. No Docker engine runs on the machines this
is tested on, so nothing is built or started here; `make test` installs Debian's
docker-compose (as root) so this runs in CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.services.procs import PROJECT_ROOT

PARTIES = ["owner", "worker-0", "worker-1", "aggregator-0", "aggregator-1"]
SERVICES = {"chain", "ipfs", "auditor", "watch", "prometheus", "grafana", *PARTIES}
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _compose() -> list[str]:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (make test installs Debian's "
                "docker-compose when run as root)")


def _config(compose_file: Path, *args: str, secrets_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "COMPOSE_"))}
    env.update(LEDGER_CONTRACT=CONTRACT, LEDGER_JOB="7", LEDGER_SECRETS_DIR=str(secrets_dir))
    return subprocess.run([*_compose(), "-f", str(compose_file), "--profile", "tools", "config", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=PROJECT_ROOT)


def test_compose_config_accepts_every_party(tmp_path):
    compose = PROJECT_ROOT / "compose.yaml"
    r = _config(compose, secrets_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    services = _config(compose, "--services", secrets_dir=tmp_path)
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) == SERVICES
    volumes = _config(compose, "--volumes", secrets_dir=tmp_path)
    assert set(volumes.stdout.split()) == {f"{s}-data" for s in SERVICES}
    # Each service mounts its own volume, and no volume is mounted twice.
    for s in SERVICES:
        assert len(re.findall(rf"\b{s}-data:/data\b", text)) == 1, s
    # Each party has its own keystore password as a secret, none in the environment.
    for p in PARTIES:
        assert f"{tmp_path}/{p}.password" in text
        assert f"LEDGER_KEY_PASSWORD_FILE: /run/secrets/{p}-password" in text
    assert "LEDGER_PRIVATE_KEY" not in text and "LEDGER_KEY_PASSWORD:" not in text
    # The job and the contract come from the environment of whoever runs compose.
    assert text.count(f"LEDGER_CONTRACT: '{CONTRACT}'") + text.count(f"LEDGER_CONTRACT: {CONTRACT}") == len(PARTIES) + 2
    assert re.search(r"- --job\s+- '7'", text)
    # The servers listen on every interface inside the compose network, published on loopback only.
    assert "127.0.0.1:8545:8545" in text.replace('"', "") or "host_ip: 127.0.0.1" in text


def test_compose_config_rejects_a_broken_file(tmp_path):
    """The check above can fail: a service that mounts an undeclared volume is refused."""
    broken = tmp_path / "compose.yaml"
    src = (PROJECT_ROOT / "compose.yaml").read_text()
    broken.write_text(src.replace('volumes: ["worker-1-data:/data"]', 'volumes: ["nowhere-data:/data"]'))
    assert "nowhere-data" in broken.read_text()
    r = _config(broken, secrets_dir=tmp_path)
    assert r.returncode != 0
    assert "nowhere-data" in r.stderr


def test_dockerfile_and_compose_name_real_paths():
    """What can be checked without an engine: every COPY source exists, and the programs
    compose.yaml runs are where `npm ci` puts them (checked against this checkout's installs)."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (PROJECT_ROOT / src).exists(), src
    compose = (PROJECT_ROOT / "compose.yaml").read_text()
    for path in re.findall(r'"/app/([^"]+)"', compose):
        if "node_modules" in path:
            assert (PROJECT_ROOT / path).exists(), f"{path} (run `make install`)"
        else:
            assert (PROJECT_ROOT / path).exists(), path
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert "deploy/secrets" in ignored and ".ledger" in ignored  # no key or party state enters the image


def test_prometheus_and_grafana_are_wired_to_the_parties():
    """Every party service serves metrics on the port Prometheus scrapes, the files compose
    mounts exist, Prometheus accepts its config (promtool, when installed), and Grafana's
    provisioned datasource has the uid the dashboard's panels name."""
    import json

    compose = (PROJECT_ROOT / "compose.yaml").read_text()
    for path in re.findall(r'"\./(deploy/[^":]+)', compose):
        assert (PROJECT_ROOT / path).exists(), path
    prom = (PROJECT_ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for party in PARTIES[1:]:
        block = compose.split(f"  {party}:\n", 1)[1].split("\n\n", 1)[0]
        assert '"--metrics-port", "9100"' in block, party
        assert f"{party}:9100" in prom, party
    assert "watch:8600" in prom
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "config", "deploy/prometheus/prometheus.yml"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    dashboard = json.loads((PROJECT_ROOT / "deploy/grafana/ledger.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {"prometheus"}
    assert "uid: prometheus" in (PROJECT_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
