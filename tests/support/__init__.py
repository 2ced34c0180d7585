"""Helpers for the end-to-end tests: a deployed contract, tiny jobs, role processes.

The roles run as real processes (`python -m ledger_cli ... worker run`), against the
test's own anvil and embedded store, with raw keys passed in LEDGER_PRIVATE_KEY.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from ledger.config import Settings
from ledger.protocol.jobconfig import JobConfig

DEV0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def tiny_config(**policy) -> JobConfig:
    """A model small enough that a round of training takes well under a second."""
    cfg = JobConfig(name="test-job", seed=7)
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size = 1, 2, 32, 32
    cfg.train.steps, cfg.train.batch_size, cfg.train.learning_rate = 5, 8, 3e-3
    cfg.policy.val_batches, cfg.policy.val_batch_size = 2, 8
    for k, v in policy.items():
        setattr(cfg.policy, k, v)
    return cfg


def replay_config(**policy) -> JobConfig:
    """``tiny_config`` for jobs whose cheats segment replay must catch: 6 steps, a snapshot
    every 2, and a validation bound loose enough that replay, not the loss, decides."""
    cfg = tiny_config(**{"max_val_loss_increase": 2.0, **policy})
    cfg.train.steps, cfg.policy.segment_steps = 6, 2
    return cfg


def keys(n: int, tag: str = "party") -> list[str]:
    """Deterministic test keys (never used outside a throwaway local chain)."""
    import hashlib

    return ["0x" + hashlib.sha256(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def address(key: str) -> str:
    return Account.from_key(key).address


def public_key(key: str) -> str:
    """The 0x-hex public key of a test key: what `ledger job create --aggregator` takes to seal to it."""
    from ledger.privacy.sealing import public_key_hex, public_key_of

    return public_key_hex(public_key_of(Account.from_key(key)))


def public_keys(*party_keys: str) -> dict[str, bytes]:
    """address -> public key, as ``node.roles.owner.create_job(keys=...)`` takes them."""
    from ledger.privacy.sealing import public_key_of

    return {address(k): public_key_of(Account.from_key(k)) for k in party_keys}


@dataclass
class Env:
    settings: Settings
    ledger: object          # TrainingLedger acting as DEV0 (the job owner)
    store: object
    procs: list = field(default_factory=list)

    def as_party(self, key: str):
        from ledger.ethereum.deploy import open_ledger

        return open_ledger(self.settings, Account.from_key(key))

    def fund(self, *party_keys: str) -> None:
        from ledger.ethereum.keys import fund_local

        for k in party_keys:
            fund_local(self.ledger.chain, address(k), 10**20)

    def create_job(self, workers: list[str], aggregators: list[str], quorum: int | None = None, rounds: int = 1,
                   round_duration: int = 120, min_submissions: int = 1, config: JobConfig | None = None,
                   proposal_window: int = 120, economics=None, auditors: list[str] = ()) -> int:
        """A job on chain; ``quorum`` defaults to the smallest strict majority of the aggregators."""
        from node.roles.owner import create_job

        self.fund(*workers, *aggregators)
        job = create_job(self.ledger, self.store, config or tiny_config(),
                         [address(k) for k in workers], [address(k) for k in aggregators],
                         quorum or len(aggregators) // 2 + 1, rounds, round_duration, min_submissions,
                         proposal_window=proposal_window, economics=economics,
                         keys=public_keys(*workers, *aggregators, *auditors), auditors=[address(k) for k in auditors])
        return job.job_id

    def commit_as(self, key: str, job: int, r: int, verdicts, merged: bytes, cid: bytes, size: int,
                  settlement=None) -> dict:
        """Commit, as aggregator ``key``, to a proposal of our choosing (a dishonest one, say);
        returns what ``reveal_as`` needs. ``settlement``: no credit and no slash by default."""
        import secrets

        from ledger.ethereum.contract import TrainingLedger

        from ledger.protocol.settlement import Settlement

        settlement = settlement or Settlement((0,) * len(self.ledger.round_workers(job, r)))
        p = dict(verdicts=list(verdicts), merged=merged, cid=cid, size=size, salt=secrets.token_bytes(32),
                 settlement=settlement)
        outcome = TrainingLedger.outcome_of(merged, cid, size, verdicts, settlement)
        self.as_party(key).commit_proposal(job, r, TrainingLedger.commit_hash_of(outcome, p["salt"], address(key)))
        return p

    def reveal_as(self, key: str, job: int, r: int, p: dict):
        rd = self.ledger.round(job, r)
        return self.as_party(key).reveal_proposal(job, r, rd.commitment, p["verdicts"], p["merged"], p["cid"], p["size"],
                                                  p["salt"], p["settlement"])

    def env(self, key: str | None = None, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env.update(LEDGER_DATA_DIR=str(self.settings.data_dir), PYTHONUNBUFFERED="1")
        if key:
            env["LEDGER_PRIVATE_KEY"] = key
        env.update(extra)
        return env

    def spawn(self, key: str, *args: str, log: Path | None = None, **extra_env: str) -> subprocess.Popen:
        """`ledger <args>` as `key`, output to a log file next to the data dir."""
        log = log or self.settings.data_dir / f"{args[0]}-{address(key)[:10]}-{len(self.procs)}.log"
        fh = open(log, "ab")
        p = subprocess.Popen([sys.executable, "-m", "ledger_cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=self.env(key, **extra_env))
        p.log = log
        self.procs.append(p)
        return p

    def spawn_module(self, key: str, module: str, *args: str, **extra_env: str) -> subprocess.Popen:
        log = self.settings.data_dir / f"{module}-{address(key)[:10]}-{len(self.procs)}.log"
        fh = open(log, "ab")
        p = subprocess.Popen([sys.executable, "-m", module, *args], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=self.env(key, **extra_env))
        p.log = log
        self.procs.append(p)
        return p

    def run(self, key: str | None, *args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ledger_cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env(key, **extra_env))

    def audit(self, job: int, replay: str = "sample", timeout: float = 400) -> tuple[subprocess.CompletedProcess, dict | None]:
        """`ledger audit --json` of ``job``: (the process, its JSON report or None)."""
        out = self.run(None, "audit", "--job", str(job), "--json", "--no-progress", "--replay", replay, timeout=timeout)
        return out, json.loads(out.stdout) if out.stdout.strip().startswith("{") else None

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def deployed_env(settings: Settings):
    """The contract deployed on the chain ``settings`` names, the embedded store, and DEV0
    as the job owner. Every process spawned through the Env is killed on exit."""
    from ledger.ethereum.deploy import deploy, open_ledger
    from ledger.store import open_store

    deploy(settings, Account.from_key(DEV0), notify=lambda m: None)
    env = Env(settings, open_ledger(settings, Account.from_key(DEV0)), open_store(settings))
    try:
        yield env
    finally:
        env.stop_all()


@contextmanager
def chain_of_its_own(tmp_path_factory, name: str):
    """For a module's fixture: an anvil of its own on a free port, under a fresh folder
    ``name``, with the contract deployed (``deployed_env``); the chain is stopped on exit."""
    from ledger.services import anvil
    from ledger.config import load_settings

    d = tmp_path_factory.mktemp(name)
    settings = load_settings({"data_dir": d / "parties", "chain_port": 0}, env={}, config_file=None)
    anvil.chain_up(settings)
    try:
        with deployed_env(settings) as env:
            yield env
    finally:
        anvil.chain_down(settings)


def wait_for(cond, timeout: float = 120, what: str = "condition", procs=()):
    """Poll ``cond`` until truthy; fail with the logs of ``procs`` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.25)
    logs = "\n".join(f"--- {p.args}\n{Path(p.log).read_text()[-3000:]}" for p in procs if getattr(p, "log", None))
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def log_text(p) -> str:
    return Path(p.log).read_text(errors="replace")
