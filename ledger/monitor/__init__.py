"""Watching a running job: its state from the chain (watch), the live page and health endpoints (watch_server), every role's Prometheus metrics (metrics)."""
