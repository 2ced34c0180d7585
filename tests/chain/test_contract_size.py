"""Every deployed contract (TrainingLedger and each library it links) fits EIP-170 with a
4 KiB margin: a contract that nears the limit fails here, not at a deploy."""

from __future__ import annotations

import pytest

from ledger.ethereum.artifacts import linked_libraries, load_artifact
from ledger.ethereum.compile import CONTRACTS, LIBRARIES

EIP170 = 24_576
BUDGET = EIP170 - 4_096  # 20,480 bytes


def runtime_size(name: str) -> int:
    code = load_artifact(name)["deployedBytecode"]
    return (len(code) - 2) // 2  # hex (placeholders of linked libraries are 40 characters, like an address)


@pytest.mark.parametrize("name", CONTRACTS)
def test_deployed_size_within_budget(name, capsys):
    size = runtime_size(name)
    with capsys.disabled():
        print(f"\n{name}: {size:,} bytes deployed, {BUDGET - size:,} under the {BUDGET:,}-byte budget "
              f"({EIP170 - size:,} under EIP-170)")
    assert size <= BUDGET, f"{name} is {size:,} bytes, over the {BUDGET:,}-byte budget (EIP-170 is {EIP170:,})"


def test_every_linked_library_is_built_and_deployed():
    assert linked_libraries(load_artifact()["linkReferences"]) == sorted(LIBRARIES)


def test_the_budget_check_can_fail(monkeypatch):
    """The size is read from the artifact: a bigger one is caught."""
    import ledger.ethereum.artifacts as arts

    real = arts.load_artifact
    monkeypatch.setattr(__import__(__name__), "load_artifact",
                        lambda name="TrainingLedger": {**real(name), "deployedBytecode": "0x" + "00" * (BUDGET + 1)})
    assert runtime_size("TrainingLedger") == BUDGET + 1
