"""The roles and what they share. Imports torch; imports ``ledger``, never ``ledger_cli``.

Rooms: ``roles`` (worker, aggregator, auditor, job owner, relay), ``models`` (the byte GPT,
Hugging Face directories, LoRA), ``training`` (deterministic training, transcripts, private
data, DP-SGD, compression, data parallelism), ``verification`` (the checks, merges and the
outer optimizer every role shares: one implementation, three callers), ``reports`` (the
audit's text, HTML and graphs), ``commands`` (demo, export, generate: built on the roles),
``simulate`` (dishonest workers and injected faults, for demos and tests).
"""
