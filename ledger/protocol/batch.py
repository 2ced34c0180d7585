"""Signed submissions: what a worker signs so that anyone can relay it in `submitBatch`.

A worker signs, with EIP-712, the same fields ``submitUpdate`` takes, under the domain
("TrainingLedger", "1", the chain id, the contract's address): the signature binds the
submission to one job, round and parent on one deployment, so a relayer can neither
alter it nor replay it elsewhere. The contract checks the signature against the
roster and counts the entry exactly as a direct submission (same event, same
commitment), so verifiers and auditors read both alike.

Torch-free, like the rest of ``ledger``.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address

from ledger.store.cid import cid_to_chain

SUBMISSION_TYPES = {
    "Submission": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint32"},
        {"name": "parentDigest", "type": "bytes32"},
        {"name": "digest", "type": "bytes32"},
        {"name": "cid", "type": "bytes32"},
        {"name": "size", "type": "uint64"},
        {"name": "numSamples", "type": "uint64"},
    ]
}
# secp256k1's group order: a signature's s above half of it is the malleable twin (EIP-2)
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class SignedSubmission:
    """One worker's submission and its 65-byte signature (r || s || v), ready to relay."""

    chain_id: int
    contract: str
    job_id: int
    round: int
    parent: bytes
    worker: str
    digest: bytes
    cid: str
    size: int
    num_samples: int
    signature: bytes

    def to_json(self) -> dict:
        return {
            "chain_id": self.chain_id, "contract": self.contract, "job_id": self.job_id, "round": self.round,
            "parent": "0x" + self.parent.hex(), "worker": self.worker, "digest": "0x" + self.digest.hex(),
            "cid": self.cid, "size": self.size, "num_samples": self.num_samples,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "SignedSubmission":
        """Parse a relayed submission; ValueError names the first bad field (hostile input)."""
        if not isinstance(d, dict):
            raise ValueError("a signed submission is a JSON object")

        def field(name, kind):
            if name not in d:
                raise ValueError(f"missing field {name!r}")
            v = d[name]
            if kind is int:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 64:
                    raise ValueError(f"field {name!r} is not an unsigned 64-bit integer")
                return v
            if not isinstance(v, str):
                raise ValueError(f"field {name!r} is not a string")
            return v

        def hexbytes(name, n):
            s = field(name, str)
            try:
                b = bytes.fromhex(s[2:] if s.startswith("0x") else s)
            except ValueError:
                raise ValueError(f"field {name!r} is not hex") from None
            if len(b) != n:
                raise ValueError(f"field {name!r} is {len(b)} bytes, not {n}")
            return b

        worker_text, contract_text = field("worker", str), field("contract", str)
        try:
            worker = to_checksum_address(worker_text)
            contract = to_checksum_address(contract_text)
        except ValueError:
            raise ValueError("field 'worker' or 'contract' is not an address") from None
        cid = field("cid", str)
        try:
            cid_to_chain(cid)
        except Exception:
            raise ValueError("field 'cid' is not a CID") from None
        return cls(
            chain_id=field("chain_id", int), contract=contract, job_id=field("job_id", int),
            round=field("round", int), parent=hexbytes("parent", 32), worker=worker,
            digest=hexbytes("digest", 32), cid=cid, size=field("size", int),
            num_samples=field("num_samples", int), signature=hexbytes("signature", 65),
        )

    def signable(self):
        return _signable(self.chain_id, self.contract, self.job_id, self.round, self.parent, self.digest,
                         self.cid, self.size, self.num_samples)

    def signer(self) -> str | None:
        """Who signed it (None for a malformed or malleable signature)."""
        if int.from_bytes(self.signature[32:64], "big") > _N // 2:
            return None
        try:
            return Account.recover_message(self.signable(), signature=self.signature)
        except Exception:
            return None

    def to_abi(self, index: int) -> tuple:
        """The contract's ``SignedUpdate``: (index, digest, cid, size, numSamples, r, vs)."""
        r = self.signature[:32]
        s = int.from_bytes(self.signature[32:64], "big")
        v = self.signature[64]
        v = v - 27 if v >= 27 else v
        vs = (s | (v << 255)).to_bytes(32, "big")
        return (int(index), self.digest, cid_to_chain(self.cid), int(self.size), int(self.num_samples), r, vs)


def _signable(chain_id, contract, job_id, round, parent, digest, cid, size, num_samples):
    return encode_typed_data(
        domain_data={"name": "TrainingLedger", "version": "1", "chainId": int(chain_id),
                     "verifyingContract": to_checksum_address(contract)},
        message_types=SUBMISSION_TYPES,
        message_data={"jobId": int(job_id), "round": int(round), "parentDigest": bytes(parent),
                      "digest": bytes(digest), "cid": cid_to_chain(cid), "size": int(size),
                      "numSamples": int(num_samples)},
    )


def sign_submission(account, chain_id: int, contract: str, job_id: int, round: int, parent: bytes,
                    digest: bytes, cid: str, size: int, num_samples: int) -> SignedSubmission:
    """Sign a submission with ``account`` (a LocalAccount: the key stays inside it)."""
    signed = account.sign_message(_signable(chain_id, contract, job_id, round, parent, digest, cid, size,
                                            num_samples))
    return SignedSubmission(int(chain_id), to_checksum_address(contract), int(job_id), int(round), bytes(parent),
                            account.address, bytes(digest), cid, int(size), int(num_samples),
                            bytes(signed.signature))
