"""Content-addressed storage: one interface, two backends, the same CID for the same bytes.

``open_store(settings)`` gives the embedded store under ``settings.store_dir`` (default)
or an IPFS node's Kubo RPC API (``settings.storage == "ipfs"``).
"""

from __future__ import annotations

from ledger.store.cid import ImportOptions
from ledger.config import Settings
from ledger.store.base import Store, StoredObject
from ledger.store.embedded import EmbeddedStore


def open_store(settings: Settings, cid_version: int = 0) -> Store:
    """The configured store, importing with Kubo's defaults for ``cid_version``."""
    options = ImportOptions.for_version(cid_version)
    if settings.storage == "ipfs":
        from ledger.store.ipfs import IpfsStore
        from ledger.services.ipfs_node import resolve_api

        return IpfsStore(resolve_api(settings), options=options, timeout=settings.ipfs_timeout)
    return EmbeddedStore(settings.store_dir, options=options)


__all__ = ["Store", "StoredObject", "EmbeddedStore", "open_store"]
