"""CLI commands (placeholder: filled in by its owner; see HACKING.md)."""

from __future__ import annotations


def register(sub) -> None:
    pass
