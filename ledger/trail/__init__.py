"""The record read back from the chain: a job's history (history) and the signed provenance of an exported model (provenance)."""
