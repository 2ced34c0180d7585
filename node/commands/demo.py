"""`ledger demo`: a whole multi-party training on one machine.

Starts the local chain (and the IPFS node with ``--ipfs``), deploys if needed,
creates keystore accounts for every party, creates a job, runs every worker and
aggregator as its own process, shows the rounds as they happen on chain, audits the
result, and generates text with the verified final model. Every process it started
is stopped on the way out, also on Ctrl-C, SIGTERM and SIGHUP (and only those: a chain
restarted by someone else meanwhile is left running); the chain's history is kept on
disk. One demo per data dir at a time (a lock); the watcher waits out a chain outage as
the parties do.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ledger.services import anvil
from ledger import atomic
from ledger.config import Settings
from ledger.ethereum.chain import redact_url
from ledger.digest import short
from ledger.errors import ChainUnreachable, LedgerError
from ledger.protocol.jobconfig import JobConfig
from ledger.services.procs import hold_lock

PASSWORD_FILE = "demo-password"
# A party with less than FUND_BELOW wei is topped up: by FUND_SET on a dev node that sets
# balances, by a FUND_TRANSFER from a funded account elsewhere (a few jobs' gas at most,
# so a key the user lends is not drained).
FUND_BELOW = 10**17
FUND_SET = 100 * 10**18
FUND_TRANSFER = 10**18


@dataclass
class DemoOptions:
    workers: int = 4
    aggregators: int = 3
    quorum: int = 2
    rounds: int = 3
    steps: int = 50
    round_duration: int = 300
    merge_rule: str = "fedavg"
    split: str = "iid"
    replay_segments: int = 1
    ipfs: bool = False
    prompt: str = "ROMEO:\n"
    tokens: int = 300
    html: Path | None = None
    timeout: float = 900.0
    temperature: float = 0.8
    top_k: int = 40
    # the model: None = the byte GPT; "smollm2" or a Hugging Face model directory
    model: str | None = None
    lora_rank: int = 0
    block_size: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    val_batches: int | None = None
    val_batch_size: int | None = None


# `ledger demo --model smollm2`: LoRA on the pretrained model, sized so the whole demo (4
# workers, 3 aggregators, every role its own process, segment replay on, the audit)
# ends within 15 minutes on a 2-core machine (README, "Fine-tuning SmolLM2").
SMOLLM2_DEMO = dict(lora_rank=8, block_size=64, batch_size=4, steps=10, rounds=2, learning_rate=2e-3,
                    val_batches=2, val_batch_size=8, tokens=48, prompt="ROMEO:\n")


@dataclass
class Party:
    role: str
    name: str
    address: str
    proc: subprocess.Popen | None = None
    log: Path | None = None


@dataclass
class Demo:
    settings: Settings
    opt: DemoOptions
    say: callable = print
    started_chain: bool = False
    started_ipfs: bool = False
    chain_pid: int | None = None           # the anvil / IPFS node this demo started (only those are stopped)
    ipfs_pid: int | None = None
    chain_id: int | None = None
    contract: str | None = None            # the deployment the job is on (keys its logs and report)
    stopped: bool = False
    owner: object = None                   # LocalAccount that deploys and owns the job
    funder: tuple = ("", None)             # (how, None | node account address | LocalAccount)
    parties: list[Party] = field(default_factory=list)

    # ---- set-up -------------------------------------------------------------------
    def up(self) -> None:
        s = self.settings
        if not s.rpc_url:
            up = anvil.chain_up(s)
            self.started_chain = up.started
            self.chain_pid = up.info.pid if up.started else None
            self.say(f"chain   {up.info.url} ({'started' if up.started else 'already running'}, state in {s.chain_dir})")
            if up.note:
                self.say(f"        note: {up.note}")
        else:
            self.say(f"chain   {redact_url(s.rpc_url)} (given; no local chain started)")
        if self.opt.ipfs:
            from ledger.services import ipfs_node

            ipfs = ipfs_node.ipfs_up(s)
            # Set before anything else can fail, so down() stops the node it started.
            self.started_ipfs = ipfs.started
            self.ipfs_pid = ipfs.info.pid if ipfs.started else None
            self.settings = s = s.replace(storage="ipfs")
            self.say(f"ipfs    {ipfs.info.url} ({'started' if ipfs.started else 'already running'}, "
                     f"blocks in {ipfs.info.extra.get('repo')})")
            if ipfs.note:
                self.say(f"        note: {ipfs.note}")
        from ledger.ethereum import deploy as deploymod
        from ledger.errors import NoDeployment

        chain = deploymod.connect(s)
        self.chain_id = chain.chain_id
        self.owner = self._owner(chain)
        if s.contract:
            self.contract = s.contract
            self.say(f"contract {s.contract} (given)")
            return
        try:
            rec = deploymod.load_record(s, chain.chain_id)
            if chain.w3.eth.get_code(rec.address):
                self.contract = rec.address
                self.say(f"contract {rec.address} (deployed earlier, block {rec.block})")
                return
            # Another chain with the same id (anvil and Hardhat are both 31337) or a reset one.
            self.say(f"note: the record for chain {chain.chain_id} names {rec.address}, which holds no code on this "
                     "chain; deploying a new one")
        except NoDeployment:
            pass
        rec = deploymod.deploy(s, account=self.owner, force=True, notify=lambda m: None)
        self.contract = rec.address
        self.say(f"contract {rec.address} (deployed now, tx {rec.tx_hash})")

    def job_dir(self, base: Path, job_id: int) -> Path:
        """This demo's files of job ``job_id`` under ``base``, keyed by chain and contract
        (job ids restart on every deployment: ``node.context.job_dir``)."""
        from node.context import job_dir

        return job_dir(base, self.chain_id, self.contract, job_id)

    # ---- who pays -------------------------------------------------------------------
    def _owner(self, chain):
        """The job owner's account, which also deploys: a key the user gave
        (LEDGER_PRIVATE_KEY / --account), else the well-known dev key on a chain where
        it holds funds, else a keystore account of the demo's, funded like a party."""
        from ledger.ethereum import keys

        try:
            acct = keys.load_account(self.settings)
            self.funder = ("key", acct)
            self.say(f"owner   {acct.address} (the account given; it pays for every party's funds)")
            return acct
        except keys.NoAccountConfigured:
            pass
        dev = keys.anvil_dev_account()
        if chain.chain_id in keys.LOCAL_CHAIN_IDS and chain.w3.eth.get_balance(dev.address) >= 10**18:
            self.funder = self._dev_funder(chain, dev)
            self.say(f"owner   {dev.address} (the local chain's dev account 0; parties funded {self.funder[0]})")
            return dev
        self.funder = self._dev_funder(chain, None)
        entry = self._keystore_account("demo-owner")
        self._fund(chain, entry.address)
        self.say(f"owner   {entry.address} (keystore account demo-owner; funded {self.funder[0]})")
        return keys.decrypt_entry(entry, self._password())

    def _dev_funder(self, chain, dev):
        """How to fund parties without a key of the user's. On a chain the demo did not
        start, from the node's own unlocked dev account (eth_accounts, signed by the node:
        no key passes through here), else by the dev node's set-balance method, else
        from the well-known dev key."""
        from ledger.ethereum import keys
        from ledger.ethereum.chain import dev_node_kind

        if self.settings.rpc_url:
            try:
                accounts = chain.w3.eth.accounts
            except Exception:  # noqa: BLE001 - a node without eth_accounts has none to lend
                accounts = []
            if accounts:
                return (f"from the node's dev account {accounts[0]}", accounts[0])
        if dev_node_kind(chain.w3):
            return ("by setting balances on the dev node", None)
        if dev is not None:
            return (f"from the dev account {dev.address}", dev)
        raise LedgerError(
            f"cannot fund the demo's parties on chain {chain.chain_id}: the node lends no dev account and is not "
            "anvil or Hardhat; give a funded account with LEDGER_PRIVATE_KEY or --account"
        )

    def _fund(self, chain, address: str) -> None:
        from ledger.ethereum import keys

        if chain.w3.eth.get_balance(address) >= FUND_BELOW:
            return
        how, who = self.funder
        if who is None:
            keys.fund_local(chain, address, FUND_SET)
        elif isinstance(who, str):        # the node's unlocked account signs
            tx = chain.w3.eth.send_transaction({"from": who, "to": address, "value": FUND_TRANSFER})
            chain.w3.eth.wait_for_transaction_receipt(tx, timeout=120)
        else:                             # a key we hold: sign here
            keys.transfer(chain, who, address, FUND_TRANSFER)

    def _password(self) -> str:
        s = self.settings
        pw_file = s.data_dir / PASSWORD_FILE
        if not pw_file.exists():
            atomic.write_bytes(pw_file, secrets.token_urlsafe(24).encode(), mode=0o600)
        return pw_file.read_text().strip()

    def _keystore_account(self, name: str):
        from ledger.ethereum import keys

        return keys.find_account(self.settings, name) or keys.new_account(self.settings, self._password(), name=name)

    def accounts(self) -> Path:
        """Keystore accounts for every party, funded (see ``_owner`` for from where)."""
        from ledger.ethereum import deploy as deploymod

        s = self.settings
        self._password()
        chain = deploymod.connect(s)
        names = [("worker", f"demo-worker-{i}") for i in range(self.opt.workers)]
        names += [("aggregator", f"demo-aggregator-{i}") for i in range(self.opt.aggregators)]
        self.parties = []
        for role, name in names:
            entry = self._keystore_account(name)
            self._fund(chain, entry.address)
            self.parties.append(Party(role, name, entry.address))
        return s.data_dir / PASSWORD_FILE

    def create_job(self) -> int:
        from ledger.ethereum.deploy import open_ledger
        from ledger.store import open_store

        from node.roles.owner import create_job, describe

        from node.roles.owner import ModelChoice

        o = self.opt
        cfg = JobConfig()
        choice = ModelChoice()
        if o.model:
            from node.models.importer import import_model

            choice = ModelChoice(import_model(o.model, self.settings.data_dir / "models", say=self.say),
                                 lora_rank=o.lora_rank)
            cfg.model.block_size = 0
        for value, section, key in ((o.block_size, cfg.model, "block_size"), (o.batch_size, cfg.train, "batch_size"),
                                    (o.learning_rate, cfg.train, "learning_rate"),
                                    (o.val_batches, cfg.policy, "val_batches"),
                                    (o.val_batch_size, cfg.policy, "val_batch_size")):
            if value is not None:
                setattr(section, key, value)
        cfg.train.steps = o.steps
        cfg.policy.merge_rule = o.merge_rule
        cfg.policy.replay_segments = o.replay_segments
        cfg.data.split = o.split
        ledger = open_ledger(self.settings, self.owner)
        job = create_job(
            ledger, open_store(self.settings), cfg,
            workers=[p.address for p in self.parties if p.role == "worker"],
            aggregators=[p.address for p in self.parties if p.role == "aggregator"],
            quorum=o.quorum, rounds=o.rounds, round_duration=o.round_duration, min_submissions=1, model=choice,
        )
        self.say(describe(job))
        return job.job_id

    # ---- the parties ----------------------------------------------------------------
    def spawn(self, job_id: int, pw_file: Path) -> None:
        logs = self.job_dir(self.settings.data_dir / "demo", job_id)
        logs.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        base.update(
            LEDGER_DATA_DIR=str(self.settings.data_dir.resolve()),
            LEDGER_STORAGE=self.settings.storage,
            LEDGER_KEY_PASSWORD_FILE=str(pw_file.resolve()),
            PYTHONUNBUFFERED="1",
        )
        if self.settings.rpc_url:
            base["LEDGER_RPC_URL"] = self.settings.rpc_url
        if self.settings.ipfs_api:
            base["LEDGER_IPFS_API"] = self.settings.ipfs_api
        if self.settings.contract:
            base["LEDGER_CONTRACT"] = self.settings.contract
        for p in self.parties:
            p.log = logs / f"{p.name}.log"
            cmd = [sys.executable, "-m", "ledger_cli", "--account", p.name, p.role, "run", "--job", str(job_id)]
            if p.role == "worker":
                cmd.append("--no-progress")
            with open(p.log, "ab") as log:
                p.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(base, LEDGER_ACCOUNT=p.name), start_new_session=True)
        self.say(f"started {self.opt.workers} workers and {self.opt.aggregators} aggregators (logs in {logs})")

    def stop_parties(self) -> None:
        for p in self.parties:
            if p.proc and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.parties:
            if p.proc:
                try:
                    p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    p.proc.wait()

    def watch(self, job_id: int) -> None:
        """Show each round's progress from the chain until the job completes, waiting out a
        chain outage as the parties do (the same backoff: ``node.context.backoff_until``)."""
        from ledger.ethereum.deploy import open_ledger

        ledger = open_ledger(self.settings)
        n_workers, n_aggs = self.opt.workers, self.opt.aggregators
        last, t0, round_t0 = None, time.monotonic(), time.monotonic()
        while True:
            try:
                seen = self._read_progress(ledger, job_id, last)
            except ChainUnreachable as e:
                self._wait_for_chain(ledger, e, t0)
                continue
            info, r, rd, props, state, ended = seen
            if state != last:
                if ended is not None:
                    self._say_round_end(*ended, time.monotonic() - round_t0)
                    round_t0 = time.monotonic()
                if not info.completed:
                    self.say(f"round {r}/{info.num_rounds}: {rd.submissions}/{n_workers} submitted, {props}/{n_aggs} proposed")
                last = state
            if info.completed:
                return
            self._check(t0)
            time.sleep(0.5)

    def _read_progress(self, ledger, job_id: int, last):
        """Everything one look at the chain shows (every read first, so an outage in the
        middle says nothing twice)."""
        info = ledger.job(job_id)
        r = min(info.current_round, info.num_rounds)
        rd = ledger.round(job_id, r)
        props = len(ledger.proposals(job_id, r))
        state = (info.current_round, rd.submissions, props, info.completed)
        ended = None
        if state != last and (last is not None and last[0] != info.current_round or info.completed):
            pr = last[0] if last else r
            prev = ledger.round(job_id, pr)
            ended = (pr, prev, ledger.proposals(job_id, pr) if prev.status == "finalized" else [])
        return info, r, rd, props, state, ended

    def _check(self, t0: float) -> None:
        """A party that failed, or the demo's time up: one error naming what to read."""
        for p in self.parties:
            if p.proc.poll() not in (None, 0):
                raise LedgerError(f"{p.name} exited with code {p.proc.returncode}; last lines of {p.log}:\n{_tail(p.log)}")
        if time.monotonic() - t0 > self.opt.timeout:
            raise LedgerError(f"the job did not complete within {self.opt.timeout:.0f}s; see the logs in {self.parties[0].log.parent}")

    def _wait_for_chain(self, ledger, err: ChainUnreachable, t0: float) -> None:
        from node.context import backoff_until

        chain = ledger.chain
        self.say(f"chain unreachable at {redact_url(chain.rpc_url)}: waiting for it, as the parties do ({err})")

        def probe():
            self._check(t0)
            chain.block_number()

        waited = backoff_until(probe, ChainUnreachable)
        chain.forget_blocks()
        self.say(f"chain back after {waited:.0f}s")

    def _say_round_end(self, r, rd, props, seconds) -> None:
        if rd.status == "finalized":
            agree = sum(1 for p in props if p.outcome == rd.outcome)
            accepted = next((p.accepted for p in props if p.outcome == rd.outcome), "?")
            self.say(f"round {r} finalized in {seconds:.0f}s: {accepted} contributions accepted, "
                     f"{agree}/{len(props)} aggregators agree, merged model {short(rd.merged_digest)}")
        elif rd.status == "skipped":
            why = "no quorum in the proposal window" if rd.skip_reason == "no-quorum" else "too few submissions"
            self.say(f"round {r} skipped: {why}, parent kept")

    def down(self, quiet: bool = False) -> list[str]:
        """Stop what this demo started, and only that: its parties, and the IPFS node and
        chain if it started them and they are still those processes (by PID; one
        restarted by someone else meanwhile is left running). Returns what was stopped.
        A stop signal that comes meanwhile does not cut it short (each step is retried)."""
        if self.stopped:
            return []
        self.stopped = True
        say = (lambda m: None) if quiet else self.say
        done: list[str] = []
        interrupted = None
        for step in (self._down_parties, self._down_ipfs, self._down_chain):
            for _ in range(2):
                try:
                    what = step(say)
                    if what:
                        done.append(what)
                    break
                except KeyboardInterrupt as e:   # a signal while stopping: finish stopping first
                    interrupted = interrupted or e
        if interrupted is not None:
            interrupted.stopped = done
            raise interrupted
        return done

    def _down_parties(self, say) -> str | None:
        running = [p for p in self.parties if p.proc and p.proc.poll() is None]
        self.stop_parties()
        if not running:
            return None
        n_w = sum(1 for p in running if p.role == "worker")
        n_a = len(running) - n_w
        return " and ".join(x for x in (f"{n_w} worker(s)" if n_w else "", f"{n_a} aggregator(s)" if n_a else "") if x)

    def _down_ipfs(self, say) -> str | None:
        from ledger.services import ipfs_node

        if not self.started_ipfs:
            return None
        info = ipfs_node.service(self.settings).running()
        if info is None or info.pid != self.ipfs_pid:
            if info is not None:
                say(f"IPFS node pid {info.pid} left running: not the one this demo started")
            return None
        ipfs_node.ipfs_down(self.settings)
        return f"the IPFS node (pid {info.pid})"

    def _down_chain(self, say) -> str | None:
        if not self.started_chain:
            return None
        info = anvil.service(self.settings).running()
        if info is None or info.pid != self.chain_pid:
            if info is not None:
                say(f"chain pid {info.pid} left running: not the one this demo started (`ledger chain down` stops it)")
            return None
        anvil.chain_down(self.settings)
        say(f"chain stopped (state saved in {self.settings.chain_dir}; `ledger chain up` brings it back)")
        return f"the chain (pid {info.pid}, state saved in {self.settings.chain_dir})"


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def genesis_text(ledger, store, job_id: int, opt: DemoOptions) -> str:
    """The same prompt continued by the job's genesis (the pretrained model), same seed."""
    from node.context import JobContext
    from node.commands.generate import sample

    ctx = JobContext.load(ledger, store, job_id)
    params, _ = ctx.load_checkpoint(ctx.genesis)
    return sample(ctx.model, params, opt.prompt, opt.tokens, temperature=opt.temperature, top_k=opt.top_k)


def side_by_side(opt: DemoOptions, before: str, gen) -> str:
    """The genesis's and the audited final model's continuations in two columns."""
    import textwrap

    from ledger.tables import text_table

    def cell(t: str) -> str:
        return "\n".join(textwrap.fill(line, 38) if line else "" for line in t.splitlines())

    return (f"the prompt {opt.prompt!r} continued ({opt.tokens} tokens, temperature {opt.temperature:g}, "
            f"top-k {opt.top_k}, seed 0):\n"
            + "\n".join(text_table(["genesis (pretrained)",
                                     f"audited final model {short(bytes.fromhex(gen.model_digest[2:]))}"],
                                    [[cell(before), cell(gen.text)]], right=set())))


def run_demo(settings: Settings, opt: DemoOptions, say=print) -> int:
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store

    from node.roles.audit import audit_job
    from node.commands.generate import generate_verified
    from node.reports.html import render_html
    from node.reports.text import render_text

    # One demo per data dir: a second one would share its keystore, chain and logs.
    lock = hold_lock(settings.data_dir / "demo.lock", f"ledger demo on data dir {settings.data_dir.resolve()}")
    demo = Demo(settings, opt, say)
    t0 = time.monotonic()
    try:
        demo.up()
        pw_file = demo.accounts()
        job_id = demo.create_job()
        demo.spawn(job_id, pw_file)
        demo.watch(job_id)
        demo.stop_parties()
        say(f"training done in {time.monotonic() - t0:.0f}s; auditing job {job_id} from chain and storage ...")
        ledger, store = open_ledger(demo.settings), open_store(demo.settings)
        report = audit_job(ledger, store, job_id, replay="sample")
        html = opt.html or demo.job_dir(demo.settings.data_dir / "reports", job_id) / "audit.html"
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(report))
        say(render_text(report))
        say("")
        if report.ok:
            gen = generate_verified(ledger, store, job_id, opt.prompt, max_new_tokens=opt.tokens, report=report,
                                    temperature=opt.temperature, top_k=opt.top_k)
            if opt.model:
                say(side_by_side(opt, genesis_text(ledger, store, job_id, opt), gen))
            else:
                say(f"text generated by the verified final model {short(bytes.fromhex(gen.model_digest[2:]))}:")
                say("-" * 60)
                say(gen.text)
                say("-" * 60)
        say(f"job          {job_id}")
        say(f"final model  {report.final_digest}")
        say(f"audit        {'OK' if report.ok else f'{report.status} ({len(report.discrepancies)} discrepancies, {len(report.unavailable)} unavailable now)'}")
        say(f"report       {html}")
        say(f"time         {time.monotonic() - t0:.0f}s")
        return 0 if report.ok else 1
    except KeyboardInterrupt as e:
        # Ctrl-C, SIGTERM or SIGHUP (ledger.services.procs.Stopped): stop what we started; the
        # command line says in one line what that was.
        e.stopped = demo.down(quiet=True)
        raise
    finally:
        demo.down()
        lock.close()
