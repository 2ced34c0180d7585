"""Handing a model on with its proof: the audited final model of a completed job as
files the usual libraries load, and a signed in-toto statement of where it came from.

``export_job`` audits the job first (``audit_job``, as ``generate`` does) and refuses
a job that is not completed or whose audit is not OK. It then writes into the folder
``out``:

- byte GPT: ``model.safetensors`` (the final checkpoint's tensors, names as in
  ``node.models.bytegpt.GPT``; the output head is ``wte.weight``, tied) and
  ``config.json`` (its ``GPTConfig`` and what the architecture is);
- Hugging Face model: ``config.json`` (the committed transformers config, plus
  ``architectures`` and ``dtype``), ``model.safetensors`` (float32, metadata
  ``format: pt``) and the committed ``tokenizer.json``: ``AutoModelForCausalLM.
  from_pretrained(out)`` and ``tokenizers.Tokenizer.from_file(out/"tokenizer.json")``
  load them, with no pickle anywhere;
- LoRA: the same, the adapter merged into the frozen base (peft's ``merge_and_unload``
  on a copy of the job's module) so the export is a plain model, and the adapter
  itself as ``adapter.safetensors`` (the ledger's tensor names); ``merged_weights``
  is that merge for ``ledger verify-export``, which recomputes it;
- a private job's files are sealed under the job key, at rest as the job's other
  artifacts: ``NAME.sealed`` for each (``ledger.trail.provenance`` says what is signed);
- ``provenance.intoto.jsonl``: a DSSE envelope of the in-toto statement whose
  subjects are the files above with their sha256, signed by the exporter's account
  (``ledger.trail.provenance`` says exactly what is signed).

The predicate's chain sections come from ``ledger.trail.provenance.chain_record`` of the
job's history, cross-checked against the audit report (each round's status and
merged digest, its accepted contributors, the final model): an export never states
what the audit did not check. The folder is written beside ``out`` and renamed into
place, so ``out`` either holds a whole export or nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ledger.trail import provenance
from ledger.digest import from_hex, to_hex
from ledger.errors import LedgerError
from ledger.trail.history import load_history

from node.context import JobContext
from node.reports.findings import AuditReport
from node.roles.audit import audit_job
from node.commands.generate import UnverifiedModel, audited_model_digest

SAFETENSORS_META = {"format": "pt"}  # what transformers' loader asks of a safetensors file


class ExportRefused(LedgerError):
    """The audit of the job is not OK: its model is not exported (exit 1, as a FAILED audit)."""

    exit_code = 1


class ExportIncomplete(ExportRefused):
    """Artifacts the final model rests on are unavailable now (exit 3, as an INCOMPLETE audit)."""

    exit_code = 3


@dataclass
class Exported:
    folder: Path
    files: dict[str, str]       # name -> sha256 hex (the statement's subjects)
    signer: str
    model_digest: str
    report: AuditReport


def export_job(ledger, store, job_id: int, out: Path, account, *, replay: str = "none",
               report: AuditReport | None = None, notify=lambda msg: None, progress=None) -> Exported:
    """Audit job ``job_id`` and write its final model and signed provenance to ``out``
    (a folder that must not exist yet, or be empty). ``account``: the eth_account
    LocalAccount that signs the statement."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise provenance.ExportError(f"{out} already exists and is not an empty folder: export into a new folder")
    info = ledger.job(job_id)
    if not info.completed:
        raise provenance.ExportError(
            f"job {job_id} is not completed (round {info.current_round} of {info.num_rounds} in progress): "
            "only a completed job's final model is exported")
    if report is None:
        notify(f"auditing job {job_id} (replay {replay}) ...")
        report = audit_job(ledger, store, job_id, replay=replay, evaluate_merged=False, progress=progress)
    _require_ok(report, job_id)
    notify(f"audit OK: {len(report.rounds)} round(s), final model {report.final_digest}")
    history = load_history(ledger, job_id)
    record = provenance.chain_record(ledger, history)
    _cross_check(report, record, job_id)

    ctx = JobContext.load(ledger, store, job_id)
    digest = audited_model_digest(report)
    params, _ = ctx.load_checkpoint(ctx.locate_model(digest))
    spec = ctx.config.model
    files, described, how = _model_files(ctx, params)

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        subjects, sealed = {}, {}
        for name, data in sorted(files.items()):
            subjects[name] = hashlib.sha256(data).hexdigest()
            if ctx.config.access.private:    # at rest as every artifact of the job: under its key
                name, data = name + provenance.SEALED_SUFFIX, ctx.store.seal(data)
                sealed[name] = hashlib.sha256(data).hexdigest()
            (tmp / name).write_bytes(data)
        predicate = {
            **record,
            "export": {
                "exporter": account.address,
                "exportedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "modelKind": spec.kind,
                "modelType": ctx.model.hf["model_type"] if spec.kind == "hf" else "byte-gpt",
                "weights": how,
                "checkpointFile": "adapter.safetensors" if spec.lora else "model.safetensors",
                "files": described,
                "lora": ({"rank": int(spec.lora_rank), "alpha": float(spec.lora_alpha),
                          "targets": list(getattr(ctx.model, "targets", spec.lora_targets)),
                          "baseDigest": spec.base.sha256, "baseCid": spec.base.cid} if spec.lora else {}),
                "tokenizer": ({"digest": spec.tokenizer.sha256, "cid": spec.tokenizer.cid}
                              if spec.tokenizer is not None else {}),
                **({"sealed": {"keyId": ctx.config.access.key_id, "cipher": "AES-256-GCM-SIV", "files": sealed}}
                   if sealed else {}),
            },
            "audit": {
                "status": report.status, "replay": report.replay, "mergeRule": report.merge_rule,
                "roundsChecked": len(report.rounds), "bytesVerified": int(report.bytes_verified),
                "discrepancies": len(report.discrepancies), "finalDigest": report.final_digest,
            },
        }
        payload = provenance.build_statement(subjects, predicate)
        envelope = provenance.sign_envelope(payload, provenance.EthereumSigner(account))
        (tmp / provenance.ENVELOPE_NAME).write_bytes(provenance.envelope_line(envelope))
        _fsync(tmp, with_files=True)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, subjects, account.address, to_hex(digest), report)


def _require_ok(report: AuditReport, job_id: int) -> None:
    if report.job_id != job_id:
        raise ExportRefused(f"refusing to export: the audit given is of job {report.job_id}, not job {job_id}")
    if report.status == "INCOMPLETE":
        raise ExportIncomplete(f"refusing to export job {job_id}: its final model is not provable now: "
                            f"{report.unavailable[0].line()} (nothing was found wrong; republish and export again)")
    if not report.ok:
        more = len(report.discrepancies) - 1
        raise ExportRefused(f"refusing to export job {job_id}: the audit failed at {report.discrepancies[0].line()}"
                            + (f" (and {more} more; run `ledger audit --job {job_id}`)" if more else ""))
    try:
        audited_model_digest(report)
    except UnverifiedModel as e:
        raise ExportRefused(str(e).replace("generate", "export")) from None


def _cross_check(report: AuditReport, record: dict, job_id: int) -> None:
    """The statement's chain sections must be what the audit checked."""
    where = []
    if record["finalModel"]["digest"] != report.final_digest:
        where.append(f"final model {record['finalModel']['digest']} vs audited {report.final_digest}")
    if record["job"]["configDigest"] != report.config_digest or record["job"]["genesisDigest"] != report.genesis_digest:
        where.append("config or genesis digest")
    audited = {ra.round: ra for ra in report.rounds}
    for rd in record["rounds"]:
        ra = audited.get(rd["round"])
        if ra is None or ra.status != rd["status"]:
            where.append(f"round {rd['round']} status")
            continue
        if rd["status"] == "finalized" and ra.merged_digest != rd["mergedDigest"]:
            where.append(f"round {rd['round']} merged digest")
        accepted = [(c.worker, c.digest) for c in ra.contributions if c.onchain_verdict == 0]
        if accepted != [(c["worker"], c["digest"]) for c in rd["contributors"]]:
            where.append(f"round {rd['round']} accepted contributors")
    if len(audited) != len(record["rounds"]):
        where.append("number of rounds")
    if where:
        raise ExportRefused(f"refusing to export job {job_id}: the chain's record and the audit differ at "
                            f"{', '.join(where)}; audit again")


# ---------------------------------------------------------------------------- model files


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    import safetensors.numpy

    prepared = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(tensors.items())}
    return safetensors.numpy.save(prepared, metadata=dict(SAFETENSORS_META))


def _model_files(ctx: JobContext, params: dict[str, np.ndarray]) -> tuple[dict[str, bytes], dict[str, str], str]:
    """(file name -> bytes, file name -> what it is, how the weights were made)."""
    spec = ctx.config.model
    if spec.kind == "byte-gpt":
        cfg = provenance.export_config(spec)     # what verify-export expects, by construction
        files = {"model.safetensors": _safetensors(params), "config.json": _json(cfg)}
        return files, {"model.safetensors": "the final model's tensors, as the ledger's checkpoint holds them",
                       "config.json": "the byte GPT's GPTConfig"}, "final checkpoint"
    lm = ctx.model
    tokenizer = ctx.store.get(spec.tokenizer.cid, from_hex(spec.tokenizer.sha256), max_size=int(spec.tokenizer.num_bytes))
    module = lm.module(params)
    if spec.lora:
        weights, arch = _merge(module)
        how = "LoRA adapter merged into the committed base (peft merge_and_unload)"
    else:
        weights, how, arch = params, "final checkpoint", type(module).__name__
    cfg = provenance.export_config(spec)
    if cfg["architectures"] != [arch]:
        raise LedgerError(f"the exported model is a {arch}, not the {cfg['architectures'][0]} its config names")
    files = {"config.json": _json(cfg), "model.safetensors": _safetensors(weights), "tokenizer.json": bytes(tokenizer)}
    described = {"config.json": "the committed transformers config (+ architectures, dtype)",
                 "model.safetensors": "the final model's weights, float32" + (", LoRA merged" if spec.lora else ""),
                 "tokenizer.json": "the committed tokenizer"}
    if spec.lora:
        files["adapter.safetensors"] = _safetensors(params)
        described["adapter.safetensors"] = "the final LoRA adapter, as the ledger's checkpoint holds it"
    return files, described, how


def merged_weights(ledger, store, job_id: int, adapter: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a LoRA job's export holds as ``model.safetensors``: the committed base
    (fetched and checked against its digest in the job config) with ``adapter`` merged,
    by the same code ``export_job`` uses. ``ledger verify-export`` recomputes them."""
    ctx = JobContext.load(ledger, store, job_id, need_key=False)
    if not ctx.config.model.lora:
        raise LedgerError(f"job {job_id} is not a LoRA job: its export merges nothing")
    return _merge(ctx.model.module(adapter))[0]


def _merge(module) -> tuple[dict[str, np.ndarray], str]:
    """(the merged weights, the merged module's class name), the job's module left as it is."""
    merged = copy.deepcopy(module).merge_and_unload()
    return _merged_params(merged), type(merged).__name__


def _merged_params(module) -> dict[str, np.ndarray]:
    from node.models.params import to_numpy

    out = to_numpy(module)
    left = [n for n in out if "lora_" in n or ".base_layer." in n]
    if left:
        raise LedgerError(f"the LoRA merge left adapter tensors behind: {left[:3]}")
    return out


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _fsync(path: Path, with_files: bool = False) -> None:
    """fsync a folder (and the files in it): the export survives a crash once renamed."""
    files = [p for p in Path(path).iterdir() if p.is_file()] if with_files else []
    for f in [*files, Path(path)]:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
