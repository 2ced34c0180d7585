"""Deployment records: written atomically, never silently replaced, checked against the artifact."""

from __future__ import annotations

import json
import time

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from conftest import DEV_KEYS
from ledger.ethereum import deploy as dep
from ledger.ethereum.artifacts import artifact_sha256, link, load_artifact
from ledger.ethereum.compile import LIBRARIES
from ledger.errors import ChainUnreachable, NoDeployment, NotOurContract, WrongChain
from support.contract import OTHER_INITCODE, deploy_raw

DEV0 = Account.from_key(DEV_KEYS[0])
DEV1 = Account.from_key(DEV_KEYS[1])


@pytest.fixture
def notes():
    return []


@pytest.fixture
def deployed(settings, rpc_url, notes):
    return dep.deploy(settings, account=DEV0, notify=notes.append)


def test_record_written(settings, rpc_url, deployed, notes):
    rec = deployed
    assert rec.chain_id == 31337
    assert Web3.is_checksum_address(rec.address)
    assert rec.tx_hash.startswith("0x") and len(rec.tx_hash) == 66
    assert rec.block >= 1
    assert rec.artifact_sha256 == artifact_sha256()
    assert rec.deployer == DEV0.address
    assert abs(rec.deployed_at - time.time()) < 60
    path = settings.deployments_dir / "31337.json"
    assert dep.record_path(settings, 31337) == path
    assert json.loads(path.read_text())["address"] == rec.address
    assert dep.load_record(settings, 31337) == rec
    assert [p.name for p in settings.deployments_dir.iterdir()] == ["31337.json"]  # no temp files
    w3 = Web3(HTTPProvider(rpc_url))
    receipt = w3.eth.get_transaction_receipt(rec.tx_hash)
    assert receipt["contractAddress"] == rec.address and receipt["blockNumber"] == rec.block
    assert notes == []  # an explicit account: no fallback note


def test_refuses_overwrite_without_force(settings, rpc_url, deployed, notes):
    path = dep.record_path(settings, 31337)
    before = path.read_bytes()
    with pytest.raises(dep.DeploymentExists, match=r"already deployed.*code is still there.*--force"):
        dep.deploy(settings, account=DEV0)
    assert path.read_bytes() == before
    again = dep.deploy(settings, account=DEV0, force=True, notify=notes.append)
    assert again.address != deployed.address
    assert dep.load_record(settings, 31337) == again
    backups = [p for p in settings.deployments_dir.iterdir() if "replaced" in p.name]
    assert len(backups) == 1 and backups[0].read_bytes() == before
    assert any("still on chain" in n for n in notes)


def test_refuses_overwrite_of_a_record_without_code(settings, rpc_url, deployed):
    gone = dep.DeploymentRecord(**{**deployed.to_json(), "address": Account.create().address})
    dep.save_record(settings, gone)
    with pytest.raises(dep.DeploymentExists, match="no code at that address"):
        dep.deploy(settings, account=DEV0)
    assert dep.deploy(settings, account=DEV0, force=True).address != gone.address


def test_fallback_to_anvil_dev_account(settings, rpc_url, notes, monkeypatch):
    monkeypatch.delenv("LEDGER_PRIVATE_KEY", raising=False)
    rec = dep.deploy(settings, notify=notes.append)
    assert rec.deployer == DEV0.address
    assert any("dev account 0" in n for n in notes)


def test_verify_deployment(settings, rpc_url, deployed):
    chain = dep.connect(settings)
    assert dep.verify_deployment(chain, deployed) == []


def test_verify_against_wrong_code_fails(settings, rpc_url, deployed):
    chain = dep.connect(settings)
    other = deploy_raw(rpc_url, OTHER_INITCODE)
    with pytest.raises(NotOurContract, match="not the TrainingLedger"):
        dep.verify_deployment(chain, dep.DeploymentRecord(**{**deployed.to_json(), "address": other}))
    with pytest.raises(NotOurContract, match="no contract code"):
        dep.verify_deployment(chain, dep.DeploymentRecord(**{**deployed.to_json(), "address": DEV1.address}))
    # the record says it came from another build of the artifact: the error says so
    older = dep.DeploymentRecord(**{**deployed.to_json(), "address": other, "artifact_sha256": "0x" + "cd" * 32})
    with pytest.raises(NotOurContract, match="another build.*ledger deploy --force"):
        dep.verify_deployment(chain, older)
    with pytest.raises(WrongChain):
        dep.verify_deployment(chain, dep.DeploymentRecord(**{**deployed.to_json(), "chain_id": 1}))


def test_deploy_records_and_verifies_every_library(settings, rpc_url, deployed):
    """The record lists each linked library; verify checks each one's code, and that the
    contract links the recorded ones."""
    chain = dep.connect(settings)
    assert sorted(deployed.libraries) == sorted(LIBRARIES)
    for name, address in deployed.libraries.items():
        assert dep.code_matches(bytes(chain.w3.eth.get_code(address)), load_artifact(name)) == "exact"
    other = dict(deployed.libraries, JobLib=deployed.libraries["SettlementLib"])
    with pytest.raises(NotOurContract, match="links JobLib at .* but the record says"):
        dep.verify_deployment(chain, dep.DeploymentRecord(**{**deployed.to_json(), "libraries": other}))


def test_verify_warns_when_the_artifact_changed(settings, rpc_url, deployed):
    chain = dep.connect(settings)
    old = dep.DeploymentRecord(**{**deployed.to_json(), "artifact_sha256": "0x" + "ab" * 32})
    warnings = dep.verify_deployment(chain, old)
    assert len(warnings) == 1 and "artifact" in warnings[0]


def test_code_matching_ignores_metadata_and_immutables():
    art = load_artifact()
    libs = {name: "0x" + f"{i + 1:02x}" * 20 for i, name in enumerate(LIBRARIES)}
    code = bytes.fromhex(link(art["deployedBytecode"], art["deployedLinkReferences"], libs)[2:])
    assert dep.code_matches(code, art) == "exact"          # the linked libraries' addresses are masked
    assert {k: v.lower() for k, v in dep.linked_addresses(code, art).items()} == libs
    # the CBOR metadata tail (ipfs hash) differs: same code, other metadata
    n = int.from_bytes(code[-2:], "big")
    meta_start = len(code) - 2 - n
    other_meta = code[: meta_start + 10] + bytes(b ^ 0xFF for b in code[meta_start + 10: meta_start + 20]) + code[meta_start + 20:]
    assert dep.code_matches(other_meta, art) == "metadata"
    # one byte of real code differs: not ours
    tampered = bytearray(code)
    tampered[100] ^= 0x01
    assert dep.code_matches(bytes(tampered), art) == ""
    # immutables are masked
    fake = {"deployedBytecode": "0x" + "60016002" + "00" * 32 + "5b",
            "immutableReferences": {"7": [{"start": 4, "length": 32}]}}
    assert dep.code_matches(bytes.fromhex("60016002" + "11" * 32 + "5b"), fake) == "exact"
    assert dep.code_matches(bytes.fromhex("60016003" + "11" * 32 + "5b"), fake) == ""


def test_load_record_errors(settings):
    with pytest.raises(NoDeployment, match="run `ledger deploy`"):
        dep.load_record(settings, 31337)
    settings.deployments_dir.mkdir(parents=True)
    dep.record_path(settings, 31337).write_text("{not json")
    with pytest.raises(NoDeployment, match="unreadable"):
        dep.load_record(settings, 31337)
    dep.record_path(settings, 31337).write_text('{"chain_id": 31337}')
    with pytest.raises(NoDeployment, match="malformed"):
        dep.load_record(settings, 31337)


def test_resolve_rpc_url(settings):
    with pytest.raises(ChainUnreachable, match="ledger chain up.*LEDGER_RPC_URL"):
        dep.resolve_rpc_url(settings)
    assert dep.resolve_rpc_url(settings.replace(rpc_url="http://example:1")) == "http://example:1"


def test_resolve_rpc_url_finds_the_local_chain(settings, rpc_url):
    assert dep.resolve_rpc_url(settings) == rpc_url


def test_open_ledger(settings, rpc_url, deployed):
    led = dep.open_ledger(settings)
    assert led.address == deployed.address
    # the same, via an explicit contract override and an expected chain id
    assert dep.open_ledger(settings.replace(contract=deployed.address.lower(), chain_id=31337)).address == deployed.address
    with pytest.raises(WrongChain, match="chain id"):
        dep.open_ledger(settings.replace(chain_id=5))
    with pytest.raises(NotOurContract, match="no contract code"):
        dep.open_ledger(settings.replace(contract=DEV1.address))
    other = deploy_raw(rpc_url, OTHER_INITCODE)
    with pytest.raises(NotOurContract, match="not the TrainingLedger"):
        dep.open_ledger(settings.replace(contract=other))


def test_open_ledger_without_record(settings, rpc_url):
    with pytest.raises(NoDeployment, match="ledger deploy"):
        dep.open_ledger(settings)
