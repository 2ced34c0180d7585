"""Training ledger, the torch-free half: what a party or an auditor needs to read and write the record.

Rooms, lowest first (a room imports only its own and lower ones; tests/unit/test_layering.py):
``services`` (local chain and IPFS processes), ``privacy`` (sealed bytes), ``store``
(content-addressed storage, CIDs, checkpoints), ``protocol`` (the rules as data and pure
functions), ``ethereum`` (the chain and the contract), ``trail`` (a job's history and an
export's provenance), ``monitor`` (the watch page, metrics). The top level holds the basics
they share: errors, settings, atomic files, safe JSON, digests, tables, progress, units.

The roles (worker, aggregator, auditor) live in ``node``, the command line in ``ledger_cli``;
neither is imported from here, and nothing here imports torch.
"""

__version__ = "0.1.0"
