"""The parties of a job, each a long-running process: worker, aggregator, auditor (audit), job owner, relay."""
