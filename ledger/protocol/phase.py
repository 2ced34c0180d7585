"""A round's proposal phase by the clock: the contract's ``closeRound`` rule, written once.

The aggregator decides from it when to skip, ``ledger round status`` what a round waits
for, the watch page which phase to show and the audit whether a skip was allowed; the
contract (``TrainingLedger.closeRound``) enforces the same rule, so a change here without
one there is a bug.
"""

from __future__ import annotations


def commits_closed(commits: int, aggregators: int, commit_deadline: int, now: float) -> bool:
    """The commit phase is over: every aggregator committed, or its deadline passed."""
    return commits >= aggregators or now > commit_deadline


def quorum_out_of_reach(commits: int, reveals: int, aggregators: int, commit_deadline: int,
                        reveal_deadline: int, now: float) -> bool:
    """Nothing can bring a quorum any more, so anyone may skip the round (``NoQuorum``):
    the reveal deadline passed, or the commits are closed and every commit is revealed."""
    return now > reveal_deadline or (commits_closed(commits, aggregators, commit_deadline, now) and reveals == commits)
