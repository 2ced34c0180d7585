"""Training ledger: chain access, storage, digests, checkpoints, history and the CLI.

This package never imports torch: the pure chain and storage paths (deploy, store,
history) work on a machine without it. The roles (worker, aggregator, auditor) live
in the `node` package, which the CLI imports only when a role command runs.
"""

__version__ = "0.1.0"
