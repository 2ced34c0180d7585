"""Amounts as people read them: wei as ETH, exact (the worker, the CLI, the HTML report and the watch page show money through it)."""

from __future__ import annotations


def eth(wei: int) -> str:
    """Wei as ETH, exact: integer arithmetic, no float and no trailing zeros."""
    wei = int(wei)
    whole, frac = divmod(abs(wei), 10**18)
    text = str(whole) + ("." + f"{frac:018d}".rstrip("0") if frac else "")
    return ("-" if wei < 0 else "") + text
