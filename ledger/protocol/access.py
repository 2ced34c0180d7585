"""Who holds a private job's key, and how more readers are given it.

A private job (``ledger job create --private``) stores every artifact encrypted under
one job key (``ledger.store.sealed``). The owner wraps that key to each member (the
owner, workers, aggregators) and each named auditor in the job config
(``access.job_key``); ``ledger job grant`` wraps it for a later reader, stores the
wrapped key and records the grant on chain (``AccessGranted``: to whom, by whom, in
which block), so the record says who could read what from when. Nothing here can be
revoked: a reader who once unwrapped the key can keep it, and content-addressed
ciphertext stays readable to it wherever a copy survives.
"""

from __future__ import annotations

from ledger.errors import LedgerError
from ledger.protocol.jobconfig import JobConfig, WrappedKey
from ledger.privacy.sealing import SealError, address_of, key_id, new_job_key, unwrap_key, wrap_key

MAX_WRAPPED_BYTES = 4096


class NoJobKey(LedgerError):
    """This account holds no key to a private job."""


def make_private(config: JobConfig, readers: dict[str, bytes]) -> bytes:
    """Mark ``config`` private, wrap a fresh job key to every reader (address -> public
    key) and return the key (the caller seals the job's artifacts with it)."""
    key = new_job_key()
    config.access.private = True
    config.access.key_id = key_id(key)
    config.access.job_key = [WrappedKey(address_of(pub), "0x" + wrap_key(key, pub).hex())
                             for _, pub in sorted(readers.items(), key=lambda kv: kv[0].lower())]
    return key


def job_key_for(ledger, store, config: JobConfig, job_id: int, account) -> bytes | None:
    """The job key as ``account`` can unwrap it (from the config, else from a grant on
    chain), or None: an outsider, who sees digests, sizes and verdicts only."""
    if account is None or not config.access.private:
        return None
    wrapped = config.access.wrapped_for(account.address)
    sources = [wrapped] if wrapped is not None else []
    if not sources and hasattr(ledger, "grants"):
        for g in ledger.grants(job_id):
            if g.to.lower() == account.address.lower() and g.cid:
                try:
                    sources.append(store.get_by_cid(g.cid, max_size=MAX_WRAPPED_BYTES))
                except LedgerError:
                    continue      # a grant whose object is gone: another may serve
    for blob in sources:
        try:
            key = unwrap_key(blob, account)
        except SealError:
            continue
        if key_id(key) == config.access.key_id:
            return key
    return None


def require_job_key(ledger, store, config: JobConfig, job_id: int, account) -> bytes:
    key = job_key_for(ledger, store, config, job_id, account)
    if key is None:
        who = account.address if account is not None else "no account"
        raise NoJobKey(f"job {job_id} is private and {who} holds no key to it: its members and granted auditors "
                       f"read it (the owner runs `ledger job grant --job {job_id} --to PUBKEY`)")
    return key


def grant(ledger, store, config: JobConfig, job_id: int, account, public_key: bytes):
    """As the job's owner: wrap the job key to ``public_key``, store it, record the grant
    on chain. Returns the transaction receipt."""
    key = require_job_key(ledger, store, config, job_id, account)
    obj = store.put(wrap_key(key, public_key))
    store.pin(obj.cid)
    return ledger.grant(job_id, address_of(public_key), obj.cid, obj.size)
