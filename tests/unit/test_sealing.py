"""Sealed envelopes and job keys (ledger/privacy/sealing.py): only the named accounts read them,
anything else that opens fails in one typed error, and hostile bytes never crash."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.privacy import sealing
from ledger.protocol.jobconfig import ConfigValueError, JobConfig, PartyKey
from support import keys

A, B, C = (Account.from_key(k) for k in keys(3, "seal"))
BINDING = b'{"job":1,"round":2,"worker":"0xabc"}'


def _pub(acct) -> bytes:
    return sealing.public_key_of(acct)


def test_an_envelope_opens_for_each_named_reader_and_no_one_else():
    items = {"windows-0": b"the drawn windows", "dp-seeds-0": os.urandom(64), "empty": b""}
    blob = sealing.seal(items, {A.address: _pub(A), B.address: _pub(B)}, BINDING)
    assert sealing.unseal(blob, A, BINDING) == items
    assert sealing.unseal(blob, B, BINDING) == items
    assert sorted(sealing.recipients_of(blob)) == sorted([A.address, B.address])
    with pytest.raises(sealing.NotARecipient):
        sealing.unseal(blob, C, BINDING)
    # nothing of the plaintext is in the bytes anyone can read
    assert b"the drawn windows" not in blob and items["dp-seeds-0"] not in blob


def test_an_envelope_bound_to_another_artifact_does_not_open():
    blob = sealing.seal({"x": b"1"}, {A.address: _pub(A)}, BINDING)
    with pytest.raises(sealing.SealBroken, match="bound to another"):
        sealing.unseal(blob, A, BINDING.replace(b"2", b"3"))


def test_a_garbage_slot_fails_for_its_reader_alone():
    """One reader handed a slot that does not open: that reader says so (SealBroken), the
    others open the same body: a worker cannot show different bytes to different readers."""
    blob = bytearray(sealing.seal({"x": b"payload"}, {A.address: _pub(A), B.address: _pub(B)}, BINDING))
    _, slots, _, _ = sealing._parse(bytes(blob))
    victim = slots[0][1]
    at = bytes(blob).index(victim)
    blob[at + 70] ^= 0xFF          # inside the victim's ECIES ciphertext
    hit = next(a for a, s in slots if s == victim)
    other = A if hit == B.address else B
    with pytest.raises(sealing.SealBroken):
        sealing.unseal(bytes(blob), A if hit == A.address else B, BINDING)
    assert sealing.unseal(bytes(blob), other, BINDING) == {"x": b"payload"}


def test_a_tampered_body_fails_for_everyone():
    blob = bytearray(sealing.seal({"x": b"payload"}, {A.address: _pub(A)}, BINDING))
    blob[-1] ^= 1
    with pytest.raises(sealing.SealBroken, match="body does not decrypt"):
        sealing.unseal(bytes(blob), A, BINDING)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 10_000))
def test_hostile_envelopes_fail_in_one_typed_error(noise, cut):
    """Random bytes, truncations and splices of a real envelope: a SealError, never another exception."""
    real = sealing.seal({"x": b"payload"}, {A.address: _pub(A)}, BINDING)
    for blob in (noise, sealing.ENVELOPE_MAGIC + noise, real[:cut % (len(real) + 1)], real[:40] + noise):
        try:
            sealing.unseal(blob, A, BINDING)
        except sealing.SealError:
            pass


def test_job_keys_wrap_and_artifacts_encrypt_deterministically():
    key = sealing.new_job_key()
    wrapped = sealing.wrap_key(key, _pub(A))
    assert sealing.unwrap_key(wrapped, A) == key
    with pytest.raises(sealing.SealBroken):
        sealing.unwrap_key(wrapped, B)
    data = os.urandom(5000)
    c1, c2 = sealing.encrypt_artifact(key, data), sealing.encrypt_artifact(key, data)
    assert c1 == c2, "two aggregators sealing the same merge must store the same bytes (one CID)"
    assert sealing.encrypt_artifact(key, data + b"x") != c1 and data not in c1
    assert sealing.decrypt_artifact(key, c1) == data
    with pytest.raises(sealing.SealBroken):
        sealing.decrypt_artifact(sealing.new_job_key(), c1)
    tampered = bytearray(c1)
    tampered[40] ^= 1
    with pytest.raises(sealing.SealBroken):
        sealing.decrypt_artifact(key, bytes(tampered))
    with pytest.raises(sealing.SealBroken):
        sealing.decrypt_artifact(key, b"plain bytes")


@pytest.mark.parametrize("text, says", [
    ("0x1234", "has 2 bytes"),
    ("0xzz", "not hex"),
    ("0x" + "00" * 64, "not a point"),
])
def test_public_keys_are_checked(text, says):
    with pytest.raises(sealing.SealError, match=says):
        sealing.parse_public_key(text)


def test_a_public_key_proves_its_address_and_both_spellings_parse():
    pub = _pub(A)
    assert sealing.address_of(pub) == A.address
    assert sealing.parse_public_key("0x04" + pub.hex()) == pub == sealing.parse_public_key(pub.hex())


def test_a_stored_config_whose_key_is_not_its_address_is_refused():
    cfg = JobConfig()
    cfg.access.keys = [PartyKey(B.address, sealing.public_key_hex(_pub(A)))]
    with pytest.raises(ConfigValueError, match=r"access.keys\[0\].*not the key of"):
        cfg.to_bytes()
    cfg.access.keys = [PartyKey(A.address, sealing.public_key_hex(_pub(A)))]
    cfg.access.auditors = [C.address]
    with pytest.raises(ConfigValueError, match="has no public key"):
        cfg.to_bytes()
    cfg.access.auditors = [A.address]
    again = JobConfig.from_bytes(cfg.to_bytes())
    assert again.access.public_key(A.address.lower()) == _pub(A)
    assert b'"access"' not in JobConfig().to_bytes(), "a job that seals nothing hashes as before"
