"""The roles — worker, aggregator, auditor — and what they share: the training task
(model, data shards, deterministic training), the verification pipeline and the
merge rules. One implementation, three callers. Imports torch; imports ``ledger``.
"""
