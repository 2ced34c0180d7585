"""A private job end to end (`ledger job create --private`): every artifact is ciphertext
to an outsider, the members and a named auditor read and audit it, a reader granted on
chain later (`ledger job grant`) audits it too, and an outsider's audit checks what is
public and names, in its own word, what it could not rerun.
"""

from __future__ import annotations

import json
import re

import pytest

from ledger.privacy import sealing
from support import DEV0, address, keys, log_text, public_key, wait_for

pytestmark = pytest.mark.slow

SHAPE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--steps", "4",
         "--batch-size", "8", "--segment-steps", "2", "--replay-segments", "1"]


def _audit(env, job: int, key: str | None):
    out = env.run(key, "audit", "--job", str(job), "--json", "--no-progress", timeout=300)
    assert out.stdout.strip(), out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def test_a_private_job_is_ciphertext_to_outsiders_and_readable_by_its_members(deployed):
    env = deployed
    workers, agg = keys(2, "priv-w"), keys(1, "priv-a")[0]
    auditor, late, outsider = keys(3, "priv-reader")
    env.fund(*workers, agg)

    # every reader needs a public key: a worker named by address alone is refused, in one line
    out = env.run(DEV0, "job", "create", "--private", "--worker", address(workers[0]), "--aggregator",
                  public_key(agg), *SHAPE)
    assert out.returncode == 2 and f"worker {address(workers[0])} has no public key" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = env.run(DEV0, "job", "create", "--private", "--cid-version", "1", "--worker", public_key(workers[0]),
                  "--aggregator", public_key(agg), *SHAPE)
    assert out.returncode == 2 and "CIDv0" in out.stderr, out.stderr

    out = env.run(DEV0, "job", "create", "--private", "--worker", public_key(workers[0]), "--worker",
                  public_key(workers[1]), "--aggregator", public_key(agg), "--auditor", public_key(auditor),
                  "--rounds", "1", "--round-duration", "60", "--proposal-window", "40", *SHAPE)
    assert out.returncode == 0, out.stderr
    job = int(re.search(r"job (\d+)", out.stdout).group(1))
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in workers]
    procs.append(env.spawn(agg, "aggregator", "run", "--job", str(job), "--poll", "0.3"))
    wait_for(lambda: env.ledger.job(job).completed, 300, "the job to complete", procs)
    info = env.ledger.job(job)
    assert info.current_parent != info.genesis_digest, "nothing was merged: " + "\n".join(log_text(p)[-2500:] for p in procs)

    # storage: the config is the one plain object; everything else is sealed under the job key
    blobs = [p.read_bytes() for p in (env.settings.store_dir / "objects").rglob("*") if p.is_file()]
    objects = [b for b in blobs if not b.startswith(b"LEDGER-IDX")]     # the store's own index files aside
    plain = [b for b in objects if not sealing.is_sealed_artifact(b) and not b.startswith(sealing.ENVELOPE_MAGIC)]
    assert len(objects) > 6 and all(b'"format":"training-ledger/job/1"' in b for b in plain), [b[:60] for b in plain]
    # a non-member's view: the final model's bytes are nowhere in clear
    from ledger.ethereum.deploy import open_ledger
    from eth_account import Account
    from node.context import JobContext

    member = JobContext.load(open_ledger(env.settings, Account.from_key(auditor)), env.store, job)
    final = member.fetch(member.locate_model(info.current_parent))
    assert not any(final[1000:1064] in b for b in blobs)

    # the named auditor reruns everything; an outsider checks what is public and says what it could not
    rc, report = _audit(env, job, auditor)
    assert rc == 0 and report["ok"] and not report["not_rerun"], (report["discrepancies"], report["not_rerun"])
    assert report["rounds"][0]["recomputed_digest"] == report["rounds"][0]["merged_digest"]
    out = env.run(outsider, "audit", "--job", str(job), "--no-progress", timeout=300)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[-1].startswith("AUDIT OK final model"), out.stdout[-2000:] + out.stderr
    assert any(ln.startswith("NOT RERUN: the verdicts, merges and replays of 1 round") for ln in lines), lines[-4:]
    out = env.run(late, "worker", "run", "--job", str(job), "--no-progress")
    assert out.returncode != 0 and "holds no key" in out.stderr and "Traceback" not in out.stderr, out.stderr

    # a grant: only the owner may, it is on chain, and the grantee then audits as a member
    out = env.run(outsider, "job", "grant", "--job", str(job), "--to", public_key(late))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    out = env.run(DEV0, "job", "grant", "--job", str(job), "--to", public_key(late))
    assert out.returncode == 0 and f"granted job {job}'s key to {address(late)}" in out.stdout, out.stderr
    (g,) = env.ledger.grants(job)
    assert g.to == address(late) and g.by == address(DEV0) and g.cid
    rc, report = _audit(env, job, late)
    assert rc == 0 and report["ok"] and not report["not_rerun"], report["not_rerun"]

    # the export is sealed like every other artifact: ciphertext to an outsider, which checks the
    # signature, the sealed files and the chain's record and says, in its own word, what it did not read
    out = env.run(auditor, "export", "--job", str(job), str(env.settings.data_dir / "sealed-export"), "--no-progress", timeout=300)
    assert out.returncode == 0 and "EXPORTED" in out.stdout, out.stdout[-1500:] + out.stderr[-1500:]
    sealed_dir = env.settings.data_dir / "sealed-export"
    names = sorted(p.name for p in sealed_dir.iterdir())
    assert names == ["config.json.sealed", "model.safetensors.sealed", "provenance.intoto.jsonl"], names
    assert all(sealing.is_sealed_artifact((sealed_dir / n).read_bytes()) for n in names[:2])
    out = env.run(outsider, "verify-export", str(sealed_dir), "--job", str(job))
    assert out.returncode == 3 and out.stdout.startswith(f"EXPORT SEALED job {job}"), out.stdout + out.stderr
    assert "the chain's record matches" in out.stdout and "Traceback" not in out.stderr, out.stdout
    # a granted reader opens it, checks the weights against the chain's final checkpoint, gets the plaintext
    plain_dir = env.settings.data_dir / "unsealed-export"
    out = env.run(late, "verify-export", str(sealed_dir), "--job", str(job), "--unseal-to", str(plain_dir))
    assert out.returncode == 0 and "EXPORT OK" in out.stdout, out.stdout + out.stderr
    assert "holds exactly the final checkpoint" in out.stdout, out.stdout
    assert sorted(p.name for p in plain_dir.iterdir()) == ["config.json", "model.safetensors", "provenance.intoto.jsonl"]
    weights = (plain_dir / "model.safetensors").read_bytes()
    assert weights[-64:] not in (sealed_dir / "model.safetensors.sealed").read_bytes()
    out = env.run(late, "verify-export", str(plain_dir), "--job", str(job))
    assert out.returncode == 0 and "holds exactly the final checkpoint" in out.stdout, out.stdout + out.stderr
    out = env.run(None, "verify-export", str(plain_dir), "--job", str(job))
    assert out.returncode == 0 and "not compared: the job is private" in out.stdout, out.stdout + out.stderr
    # a changed byte of ciphertext fails for anyone, key or not
    blob = bytearray((sealed_dir / "model.safetensors.sealed").read_bytes())
    blob[len(blob) // 2] ^= 1
    (sealed_dir / "model.safetensors.sealed").write_bytes(bytes(blob))
    for who in (outsider, late):
        out = env.run(who, "verify-export", str(sealed_dir), "--job", str(job))
        assert out.returncode == 1 and "model.safetensors.sealed: sha256 is" in out.stderr, out.stdout + out.stderr
