"""Verified inference: text from a job's final model, loaded only after the audit of
its lineage passes. A model whose history does not verify is never run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ledger.errors import FAILED, INCOMPLETE, LedgerError

from node.roles.audit import audit_job
from node.reports.findings import AuditReport
from node.context import JobContext


class UnverifiedModel(LedgerError):
    """The audit of the model's lineage failed (exit 1), or could not be completed with
    what storage holds now (exit 3): refuse to run it."""

    exit_code = FAILED


@dataclass
class Generated:
    text: str
    model_digest: str
    report: AuditReport


def audited_model_digest(report: AuditReport) -> bytes:
    """The model whose lineage ``report`` checked: the completed job's final model, or the
    latest finalized one while the job ran. Never the job's parent read again afterwards:
    a round finalized after the audit would be loaded unaudited."""
    model = report.final_digest or report.latest_digest
    if not model or not model.startswith("0x"):
        raise UnverifiedModel(f"refusing to generate: the audit of job {report.job_id} names no final model")
    return bytes.fromhex(model[2:])


def generate_verified(ledger, store, job_id: int, prompt: str | bytes, max_new_tokens: int = 200,
                      temperature: float = 0.8, top_k: int | None = 40, seed: int = 0,
                      report: AuditReport | None = None) -> Generated:
    if report is None:
        report = audit_job(ledger, store, job_id, replay="none", evaluate_merged=False)
    if report.job_id != job_id:
        raise UnverifiedModel(f"refusing to generate: the audit given is of job {report.job_id}, not job {job_id}")
    if report.status == "INCOMPLETE":
        first = report.unavailable[0].line()
        e = UnverifiedModel(
            f"refusing to generate: the final model of job {job_id} is not provable now: {first}"
            f" (nothing was found wrong; republish the missing artifacts and audit again)")
        e.exit_code = INCOMPLETE
        raise e
    if not report.ok:
        first = report.discrepancies[0].line()
        more = len(report.discrepancies) - 1
        raise UnverifiedModel(
            f"refusing to generate: the audit of job {job_id} failed at {first}"
            + (f" (and {more} more; run `ledger audit --job {job_id}`)" if more else "")
        )
    ctx = JobContext.load(ledger, store, job_id)
    digest = audited_model_digest(report)
    params, _ = ctx.load_checkpoint(ctx.locate_model(digest))
    return Generated(sample(ctx.model, params, prompt, max_new_tokens, temperature, top_k, seed),
                     "0x" + digest.hex(), report)


def sample(lm, params, prompt: str | bytes, max_new_tokens: int, temperature: float = 0.8,
           top_k: int | None = 40, seed: int = 0) -> str:
    """The prompt and its continuation by the model with ``params``, through the job's
    tokenizer; the same seed gives the same text."""
    # Batch-1 sampling gains nothing from more threads and loses much on a shared machine.
    torch.set_num_threads(1)
    text = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8", errors="surrogateescape")
    ids = [int(i) for i in lm.encode(text)] or [10 if lm.token_bytes == 1 else 0]
    module = lm.module(params)
    out = lm.generate(module, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                      generator=torch.Generator().manual_seed(int(seed)))
    return lm.decode(out)
