"""Verdict codes: one byte per contribution in an aggregator's on-chain proposal.

The contract only counts zeros (accepted); the meaning of each non-zero code is
fixed here and shared by the aggregators, the audit and the history display.
Codes are on chain, so they never change meaning and new ones are appended: their
numbers do not follow the pipeline's order (``node.verification.verify`` lists the checks in order).
"""

from __future__ import annotations

from enum import IntEnum


class Verdict(IntEnum):
    ACCEPTED = 0
    UNAVAILABLE = 1      # the CID could not be fetched from storage
    INTEGRITY = 2        # the bytes do not hash to the on-chain digest
    FORMAT = 3           # not a well-formed safetensors checkpoint (or over the size cap)
    LINEAGE = 4          # declared parent / job / round / worker in the checkpoint do not match
    STRUCTURE = 5        # tensor names, shapes or dtypes differ from the parent
    NON_FINITE = 6       # NaN or Inf values
    UPDATE_NORM = 7      # the update (checkpoint - parent) exceeds the policy's norm bound
    VALIDATION_LOSS = 8  # held-out loss worse than the policy allows
    REPLAY = 9           # a drawn transcript segment, replayed, does not land on its published end
    DUPLICATE = 10       # same bytes or tensors as an earlier submission in the round (or the parent)
    SAMPLE_COUNT = 11    # declared sample count (the FedAvg weight) is not what the job's training uses
    TRANSCRIPT = 12      # no or a malformed training transcript, or a snapshot that breaks the chain of
                         # states (not its committed digest, another contribution's, wrong shape)
    TRANSCRIPT_UNAVAILABLE = 13  # a drawn snapshot (or a disclosed window bundle) could not be fetched from storage
    WINDOWS_UNREVEALED = 14      # private data: a drawn segment's window bundle was not revealed in time
    WINDOWS_PROOF = 15           # private data: a revealed window bundle is not the committed one, or its
                                 # chunks are not the segment's or fail their Merkle proof against the root
    TRANSCRIPT_UNREVEALED = 16   # a drawn segment's snapshot, published only after the draw, was not
                                 # revealed within the reveal window
    DP_SEEDS = 17                # DP job: a drawn segment's noise seeds were not handed to its verifier, or
                                 # are not the ones the manifest commits to
    SEALED = 18                  # a disclosed envelope that this verifier, named as its reader, cannot open
                                 # (its key slot or body does not decrypt) or that lacks a drawn item
    COMPRESSION = 19             # a compressed contribution (--compress) that is not the compression of the end
                                 # of its training with its committed error feedback, or whose next error
                                 # feedback is not the one that compression leaves

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


def describe(code: int) -> str:
    try:
        return Verdict(code).label
    except ValueError:
        return f"unknown({code})"
