"""The chain connection: web3, local signing, revert decoding, paginated logs.

``Chain.connect(url, account)`` checks that the endpoint answers (and is the
expected chain); ``transact`` builds a transaction, signs it *locally* with the
``eth_account`` LocalAccount (never with keys held by the node), sends it and waits
for the receipt. Every failure becomes a ``LedgerError`` a user can act on:

- a custom-error revert -> ``ContractReverted(name, args)``, decoded from the ABI
  (web3 8 leaves ``ContractCustomError.data`` raw: the 4-byte selector is matched
  against the ABI's error entries and the rest decoded with ``eth_abi``); a
  transaction mined with status 0 is replayed with ``eth_call`` at its block to
  recover the error;
- insufficient funds -> ``InsufficientFunds``; connection errors and timeouts (an RPC
  request, or a transaction not mined within ``tx_timeout``) -> ``ChainUnreachable``.

``get_logs`` queries in block ranges (default 2,000 blocks, halved when a provider
refuses a range) so providers that cap ``eth_getLogs`` work.

The private key stays inside the LocalAccount: it appears in no message, repr or log.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from ledger import safejson
from ledger.errors import (
    AccountError,
    ChainUnreachable,
    ContractReverted,
    InsufficientFunds,
    TransactionFailed,
    WrongChain,
)

log = logging.getLogger(__name__)

DEFAULT_LOG_PAGE = 2000
DEFAULT_TX_TIMEOUT = 120.0
DEFAULT_RPC_TIMEOUT = 30.0
ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
UP_HINT = "is the chain up? `ledger chain up`"


def redact_url(url: str) -> str:
    """The URL without user:password (an RPC URL may carry credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urlunsplit(parts)


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    try:
        from web3.exceptions import ProviderConnectionError, RequestTimedOut

        if isinstance(exc, (ProviderConnectionError, RequestTimedOut)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def _message(exc: BaseException) -> str:
    """The node's error message of an RPC error (web3 wraps it in a dict or a string)."""
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, dict) and "message" in arg:
            return str(arg["message"])
    msg = getattr(exc, "message", None)
    return str(msg if msg else exc)


def _as_bytes(data: Any) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        s = data[2:] if data.startswith(("0x", "0X")) else data
        try:
            return bytes.fromhex(s)
        except ValueError:
            return None
    if isinstance(data, dict):
        return _as_bytes(data.get("data"))
    return None


def _canonical_type(inp: dict) -> str:
    """The ABI type string of an input, tuples expanded: ``(bytes32,address[])[]``."""
    t = inp["type"]
    if t.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in inp.get("components", []))
        return f"({inner}){t[len('tuple'):]}"
    return t


def tx_hash_of(receipt) -> str:
    """A receipt's transaction hash as ``0x`` hex, for logs and records."""
    h = receipt["transactionHash"]
    return h.to_0x_hex() if hasattr(h, "to_0x_hex") else str(h)


def plain_value(value: Any) -> Any:
    """ABI-decoded values as plain Python: bytes, int, str (checksummed addresses), lists."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: plain_value(v) for k, v in value.items()}
    return value


# Retries of a send that lost its nonce to a concurrent sender from the same account.
NONCE_RETRIES = 5


def dev_node_kind(w3) -> str | None:
    """``"anvil"``, ``"hardhat"`` or None (not a known local dev node), from web3_clientVersion."""
    try:
        version = str(w3.provider.make_request("web3_clientVersion", []).get("result") or "").lower()
    except Exception:  # noqa: BLE001 - a node without the method is simply not known
        return None
    for kind in ("anvil", "hardhat"):
        if kind in version:
            return kind
    return None


@dataclass(frozen=True)
class AbiError:
    name: str
    types: list[str]
    names: list[str]


class ErrorDecoder:
    """4-byte selector -> custom error, from the ABIs this chain has seen."""

    def __init__(self) -> None:
        self._errors: dict[bytes, AbiError] = {}
        self._seen: set[int] = set()

    def add_abi(self, abi: Sequence[dict] | None) -> None:
        if not abi or id(abi) in self._seen:
            return
        self._seen.add(id(abi))
        for entry in abi:
            if entry.get("type") != "error":
                continue
            types = [_canonical_type(i) for i in entry.get("inputs", [])]
            sig = f"{entry['name']}({','.join(types)})"
            self._errors[keccak(text=sig)[:4]] = AbiError(
                entry["name"], types, [i.get("name") or f"arg{n}" for n, i in enumerate(entry.get("inputs", []))]
            )

    def decode(self, data: bytes) -> tuple[str, dict] | None:
        """(name, args) of revert data, or None if the selector is unknown."""
        if len(data) < 4:
            return None
        sel, body = data[:4], data[4:]
        if sel == ERROR_SELECTOR:
            try:
                return "Error", {"message": abi_decode(["string"], body)[0]}
            except Exception:
                return "Error", {"data": data}
        if sel == PANIC_SELECTOR:
            try:
                return "Panic", {"code": abi_decode(["uint256"], body)[0]}
            except Exception:
                return "Panic", {"data": data}
        err = self._errors.get(sel)
        if err is None:
            return None
        try:
            values = abi_decode(err.types, body)
        except Exception:
            return err.name, {"data": data}
        return err.name, {
            n: (to_checksum_address(v) if t == "address" else plain_value(v))
            for n, t, v in zip(err.names, err.types, values)
        }


class _FastReads:
    """The two reads every waiting node repeats several times a second (``eth_blockNumber``
    and a small ``eth_getLogs``), sent over one kept-alive ``http.client`` connection per
    thread. Through web3 and requests one such read costs ~0.44 ms of CPU, over a bare
    connection ~0.04 ms; on a machine whose cores are training, that polling is CPU
    taken from the training. ``call`` answers None whenever it cannot (credentials in
    the URL, a refused connection, an error or unexpected answer) and the caller then
    asks through web3, which reports failures the usual way."""

    def __init__(self, rpc_url: str, timeout: float = 10.0):
        parts = urlsplit(rpc_url or "")
        self._ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not (parts.username or parts.password)
        self._parts, self._timeout = parts, timeout
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._local = threading.local()

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            p = self._parts
            cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(p.hostname, p.port, timeout=self._timeout)
        return conn

    def call(self, method: str, params: list) -> Any:
        if not self._ok:
            return None
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        try:
            conn = self._connection()
            conn.request("POST", self._path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = safejson.loads(resp.read(), what="the node's answer")
            if resp.status != 200 or "result" not in answer:
                raise ValueError(resp.status)
            return answer["result"]
        except Exception:  # the web3 path reports it (or succeeds where this could not)
            conn, self._local.conn = getattr(self._local, "conn", None), None
            if conn is not None:
                conn.close()
            return None

    def block_number(self) -> int | None:
        result = self.call("eth_blockNumber", [])
        try:
            return None if result is None else int(result, 16)
        except (TypeError, ValueError):
            return None


# The newest block number this process has read from any chain (``Chain.block_number``).
last_block_seen = 0


class Chain:
    """A web3 connection plus (optionally) a local signing account."""

    def __init__(
        self,
        w3: Web3,
        chain_id: int,
        account=None,
        rpc_url: str = "",
        log_page: int = DEFAULT_LOG_PAGE,
        tx_timeout: float = DEFAULT_TX_TIMEOUT,
        _decoder: ErrorDecoder | None = None,
    ):
        self.w3 = w3
        self.chain_id = int(chain_id)
        self._account = account
        self.rpc_url = rpc_url
        self.log_page = int(log_page)
        self.tx_timeout = tx_timeout
        self._decoder = _decoder or ErrorDecoder()
        self._lock = threading.Lock()
        self._timestamps: dict[int, int] = {}
        self._fast = _FastReads(rpc_url)

    # ------------------------------------------------------------------ connect

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        account=None,
        expected_chain_id: int | None = None,
        *,
        timeout: float = DEFAULT_RPC_TIMEOUT,
        log_page: int = DEFAULT_LOG_PAGE,
        tx_timeout: float = DEFAULT_TX_TIMEOUT,
    ) -> "Chain":
        """Connect to ``rpc_url``; ChainUnreachable if it does not answer, WrongChain on a chain id mismatch."""
        from web3.middleware import ExtraDataToPOAMiddleware
        from web3.types import RPCEndpoint

        shown = redact_url(rpc_url)
        if not rpc_url or not str(rpc_url).startswith(("http://", "https://")):
            raise ChainUnreachable(f"{shown or '(no URL)'} is not an http(s) JSON-RPC URL; {UP_HINT} (or set LEDGER_RPC_URL)")
        # web3's validation middleware asks for the chain id before every eth_call and
        # every transaction: two extra round trips that tripled the cost of each state read
        # (and so of every node's polling). The chain id of an endpoint does not change
        # under a connection (it is checked once, below), so that one answer is cached.
        try:
            provider = Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None,
                                         cache_allowed_requests=True, cacheable_requests={RPCEndpoint("eth_chainId")})
        except TypeError:  # pragma: no cover - older signature
            provider = Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout})
        w3 = Web3(provider)
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        try:
            chain_id = int(w3.eth.chain_id)
        except Exception as e:  # connection refused, DNS, timeout, garbage answer
            raise ChainUnreachable(
                f"cannot reach the chain at {shown} ({type(e).__name__}); {UP_HINT}"
            ) from None
        if expected_chain_id is not None and chain_id != int(expected_chain_id):
            raise WrongChain(
                f"the chain at {shown} has chain id {chain_id}, expected {expected_chain_id}; "
                "point LEDGER_RPC_URL at the right chain or fix LEDGER_CHAIN_ID"
            )
        return cls(w3, chain_id, account, rpc_url, log_page=log_page, tx_timeout=tx_timeout)

    def public_bytes(self) -> bytes:
        """Everything the chain makes public, block 0 to the head: every transaction's
        calldata and every log's topics and data, NUL-separated (what a privacy scan
        searches: `bench/privacy.py`, the private-data tests)."""
        out = []
        for n in range(self.w3.eth.block_number + 1):
            for t in self.w3.eth.get_block(n, full_transactions=True).transactions:
                out.append(bytes(t["input"]))
                for lg in self.w3.eth.get_transaction_receipt(t["hash"]).logs:
                    out += [bytes(lg["data"]), *(bytes(x) for x in lg["topics"])]
        return b"\0".join(out)

    def with_account(self, account) -> "Chain":
        """The same connection acting as ``account`` (a LocalAccount)."""
        return Chain(self.w3, self.chain_id, account, self.rpc_url, self.log_page, self.tx_timeout, self._decoder)

    @property
    def address(self) -> str | None:
        """The signing account's address (None if read-only)."""
        return self._account.address if self._account is not None else None

    @property
    def account(self):
        return self._account

    def __repr__(self) -> str:
        return f"Chain(url={redact_url(self.rpc_url)!r}, chain_id={self.chain_id}, address={self.address})"

    __str__ = __repr__

    def __getstate__(self):  # never pickle (and so never copy around) the key
        raise TypeError("Chain objects hold a signing key and cannot be pickled")

    # ------------------------------------------------------------------ contracts

    def contract(self, address: str, abi: Sequence[dict]):
        """A web3 contract at ``address``; its custom errors become decodable."""
        self._decoder.add_abi(abi)
        return self.w3.eth.contract(address=to_checksum_address(address), abi=abi)

    def register_abi(self, abi: Sequence[dict]) -> None:
        self._decoder.add_abi(abi)

    def decode_revert(self, data: bytes | str | None) -> tuple[str, dict] | None:
        raw = _as_bytes(data)
        return self._decoder.decode(raw) if raw else None

    # ------------------------------------------------------------------ calls

    def call(self, fn, context: str = "", block_identifier: Any = "latest") -> Any:
        """``fn.call()`` (from this chain's account, if any) with reverts decoded into ContractReverted."""
        self._learn(fn)
        try:
            tx = {"from": self._account.address} if self._account is not None else None
            return fn.call(tx, block_identifier=block_identifier)
        except Exception as e:
            raise self._translate(e, context) from None

    def transact(self, fn, context: str = "", gas: int | None = None, value: int = 0, extra_gas: int = 0) -> dict:
        """Build, sign locally, send and wait for ``fn`` (a contract function or constructor call).

        Returns the receipt; raises ContractReverted, InsufficientFunds, ChainUnreachable,
        TransactionFailed. ``extra_gas`` is added to the estimate for calls whose cost
        depends on what other senders do first (unused gas is refunded).
        """
        if self._account is None:
            raise AccountError(
                f"{context or 'transaction'}: no account to sign with; "
                "set --account / LEDGER_ACCOUNT (keystore) or LEDGER_PRIVATE_KEY"
            )
        self._learn(fn)
        sender = self._account.address
        with self._lock:
            # Another process sending from the same account (one party in several jobs)
            # can take our nonce between the read and the send: read it again and retry.
            for attempt in range(NONCE_RETRIES + 1):
                try:
                    nonce = self.w3.eth.get_transaction_count(sender, "pending")
                    params: dict = {"from": sender, "nonce": nonce, "chainId": self.chain_id, "value": value}
                    # A placeholder limit so web3 does not estimate at "latest" itself (see _estimate).
                    params["gas"] = int(gas) if gas is not None else 1
                    tx = fn.build_transaction(params)
                    if gas is None:
                        tx["gas"] = self._padded_gas(self._estimate(tx) + int(extra_gas))
                    signed = self._account.sign_transaction(tx)
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                    break
                except Exception as e:
                    low = str(e).lower()
                    if attempt < NONCE_RETRIES and ("nonce too low" in low or "replacement transaction underpriced" in low):
                        time.sleep(0.05 + random.random() * 0.25)
                        continue
                    raise self._translate(e, context) from None
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.tx_timeout, poll_latency=0.05)
        except TimeExhausted:
            raise ChainUnreachable(
                f"{context or 'transaction'}: {tx_hash.to_0x_hex()} was sent to {redact_url(self.rpc_url)} but not "
                f"mined within {self.tx_timeout:.0f}s; is the chain up and mining? `ledger chain up`"
            ) from None
        except Exception as e:
            raise self._translate(e, context) from None
        if receipt["status"] != 1:
            raise self._replay_failure(tx, receipt, context)
        return receipt

    def _estimate(self, tx: dict) -> int:
        """Gas for ``tx``, estimated against the *pending* block (and so finds reverts).

        web3 estimates at "latest". A chain that mines only when a transaction arrives
        (Hardhat's node, a quiet dev chain) then judges by the last block's timestamp,
        which can lie minutes behind the wall clock: a proposal after a deadline that
        has passed in real time reverts there with RoundNotClosed, forever, since no
        one mines a block. The pending block is the one this transaction will land in
        and carries the current time, on every client (anvil, Hardhat, geth). That was
        chosen over mining a block on purpose (``evm_mine``): it needs no dev-only RPC
        and does the same on a production chain. A node that refuses "pending" (a
        few hosted endpoints) is asked about "latest" instead."""
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            return int(self.w3.eth.estimate_gas(call, "pending"))
        except Exception as e:
            if isinstance(e, ContractLogicError) or getattr(e, "data", None) is not None or _is_connection_error(e):
                raise
            low = _message(e).lower()
            if "pending" not in low and "block" not in low and "not supported" not in low:
                raise
        return int(self.w3.eth.estimate_gas(call, "latest"))

    def _padded_gas(self, estimate: int) -> int:
        padded = int(estimate * 1.2) + 5_000
        try:
            limit = int(self.w3.eth.get_block("latest")["gasLimit"])
            return min(padded, limit)
        except Exception:
            return padded

    def _learn(self, fn) -> None:
        abi = getattr(fn, "contract_abi", None)
        if abi is None:
            abi = getattr(fn, "abi", None)
        if isinstance(abi, list):
            self._decoder.add_abi(abi)

    def _replay_failure(self, tx: dict, receipt, context: str) -> Exception:
        """A status-0 receipt: replay the transaction with eth_call at its block to get the error."""
        h = tx_hash_of(receipt)
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        block = int(receipt["blockNumber"])
        for at in dict.fromkeys((block, max(0, block - 1))):  # its block, then the state before it
            try:
                self.w3.eth.call(call, block_identifier=at)
            except Exception as e:
                err = self._translate(e, context)
                if isinstance(err, (ContractReverted, ChainUnreachable)):
                    return err
        used = receipt.get("gasUsed")
        return TransactionFailed(
            f"{context or 'transaction'}: {h} was mined with status 0 (gas used {used} of {tx.get('gas')}); "
            "the revert could not be reproduced (out of gas?)"
        )

    def _translate(self, exc: BaseException, context: str) -> Exception:
        """Any web3/RPC exception -> a LedgerError (already-LedgerErrors pass through)."""
        from ledger.errors import LedgerError

        where = f"{context}: " if context else ""
        if isinstance(exc, LedgerError):
            return exc
        if isinstance(exc, ContractLogicError) or getattr(exc, "data", None) is not None:
            decoded = self.decode_revert(getattr(exc, "data", None))
            if decoded:
                return ContractReverted(decoded[0], decoded[1], context)
            if isinstance(exc, ContractLogicError):
                msg = _message(exc)
                return ContractReverted("Error", {"message": msg}, context)
        if _is_connection_error(exc):
            return ChainUnreachable(f"{where}lost the chain at {redact_url(self.rpc_url)} ({type(exc).__name__}); {UP_HINT}")
        msg = _message(exc)
        low = msg.lower()
        if "insufficient funds" in low or "insufficient balance" in low:
            who = self.address
            try:
                bal = self.w3.eth.get_balance(who)
                have = f"; it has {bal} wei"
            except Exception:
                have = ""
            return InsufficientFunds(
                f"{where}account {who} cannot pay for gas on chain {self.chain_id}{have}; "
                "fund it (on a local chain: `ledger account fund`)"
            )
        if "nonce too low" in low or "already known" in low or "replacement transaction underpriced" in low:
            return TransactionFailed(f"{where}the node refused the transaction ({msg}); another process may be "
                                     "sending from the same account at the same time; retry")
        if isinstance(exc, (Web3RPCError, ValueError, TransactionNotFound)):
            return TransactionFailed(f"{where}the node refused the request: {msg}")
        return TransactionFailed(f"{where}{type(exc).__name__}: {msg}")

    # ------------------------------------------------------------------ blocks and logs

    def block_number(self) -> int:
        head = self._fast.block_number()
        if head is None:
            try:
                head = int(self.w3.eth.block_number)
            except Exception as e:
                raise self._translate(e, "block number") from None
        global last_block_seen
        last_block_seen = head       # served as ledger_last_block by ledger.monitor.metrics
        return head

    def wait_for_block(self, after: int | None, timeout: float, every: float = 0.2) -> int:
        """Wait until the head is past block ``after`` or ``timeout`` seconds passed; return
        the head. A block-number query is one small RPC, so a node waiting on the chain
        reacts to a transaction within ``every`` seconds and runs its heavier state reads
        once per new block, rather than sleeping a whole poll interval past an event
        (two such sleeps sit on a round's critical path: round closed -> proposals, and
        finalized -> the workers' next round)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            head = self.block_number()
            left = deadline - time.monotonic()
            if (after is not None and head > after) or left <= 0:
                return head
            time.sleep(min(every, left))

    def has_logs(self, address: str, from_block: int, to_block: int) -> bool:
        """Whether the contract at ``address`` emitted anything in blocks
        ``from_block..to_block``: for a contract that emits an event on every state
        change, whether its state can have changed there."""
        if to_block < from_block:
            return False
        addr = to_checksum_address(address)
        logs = self._fast.call("eth_getLogs", [{"address": addr, "fromBlock": hex(from_block), "toBlock": hex(to_block)}])
        if isinstance(logs, list):
            return bool(logs)
        return bool(self.get_raw_logs(addr, from_block=from_block, to_block=to_block))

    def block_timestamp(self, number: int) -> int:
        ts = self._timestamps.get(number)
        if ts is None:
            try:
                ts = int(self.w3.eth.get_block(number)["timestamp"])
            except Exception as e:
                raise self._translate(e, f"block {number}") from None
            self._timestamps[number] = ts
        return ts

    def block_hash_or_none(self, number: int) -> bytes | None:
        """The hash of block ``number``, or None if the chain has no such block (any more:
        a node comparing it with the hash it saw earlier notices a rollback or reorg)."""
        ids = self.block_ids_or_none(number)
        return ids[0] if ids else None

    def block_ids_or_none(self, number: int) -> tuple[bytes, bytes] | None:
        """(hash, parent hash) of block ``number``, or None if the chain has no such block."""
        blk = self._fast.call("eth_getBlockByNumber", [hex(number), False])
        if isinstance(blk, dict) and isinstance(blk.get("hash"), str) and isinstance(blk.get("parentHash"), str):
            return bytes.fromhex(blk["hash"][2:]), bytes.fromhex(blk["parentHash"][2:])
        try:
            b = self.w3.eth.get_block(number)
        except BlockNotFound:
            return None
        except Exception as e:
            raise self._translate(e, f"block {number}") from None
        return bytes(b["hash"]), bytes(b["parentHash"])

    def forget_blocks(self) -> None:
        """Drop what was cached per block number: after a rollback those blocks may be others."""
        self._timestamps.clear()

    def block_hash(self, number: int) -> bytes:
        try:
            return bytes(self.w3.eth.get_block(number)["hash"])
        except Exception as e:
            raise self._translate(e, f"block {number}") from None

    def first_block_after(self, ts: int, lo: int = 0) -> int | None:
        """The first block (from ``lo`` on) whose timestamp is past unix time ``ts``, or
        None while the head's is not: where a round closed by its deadline closed.
        Block timestamps never decrease, so a binary search (log2(head - lo) reads)."""
        head = self.block_number()
        if self.block_timestamp(head) <= ts:
            return None
        lo = max(0, int(lo))
        hi = head
        while lo < hi:
            mid = (lo + hi) // 2
            if self.block_timestamp(mid) > ts:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def nudge(self) -> bool:
        """On a local dev node (anvil, Hardhat) that mines only when a transaction comes,
        mine an empty block, so something waiting for a later block (a round's draw) is not
        waiting for someone else's transaction; elsewhere nothing. True if a block was mined."""
        if dev_node_kind(self.w3) is None:
            return False
        try:
            self.w3.provider.make_request("evm_mine", [])
        except Exception:  # noqa: BLE001 - a hint only
            return False
        return True

    def get_logs(
        self,
        event,
        from_block: int = 0,
        to_block: int | str = "latest",
        argument_filters: dict | None = None,
        page: int | None = None,
    ) -> list:
        """Decoded logs of ``event`` (e.g. ``contract.events.UpdateSubmitted``), in chain order,
        fetched in pages of ``page`` blocks (default: this chain's log_page)."""
        ev = event() if isinstance(event, type) else event

        def fetch(a: int, b: int) -> list:
            return list(ev.get_logs(from_block=a, to_block=b, argument_filters=argument_filters))

        logs = self._paginate(fetch, from_block, to_block, page, f"{getattr(ev, 'event_name', 'event')} logs")
        return sorted(logs, key=lambda l: (l["blockNumber"], l["logIndex"]))

    def get_raw_logs(
        self,
        address: str,
        topics: list | None = None,
        from_block: int = 0,
        to_block: int | str = "latest",
        page: int | None = None,
    ) -> list:
        """Raw logs (``eth_getLogs``) of ``address`` matching ``topics``, paginated, in chain order."""
        addr = to_checksum_address(address)

        def fetch(a: int, b: int) -> list:
            flt: dict = {"address": addr, "fromBlock": a, "toBlock": b}
            if topics is not None:
                flt["topics"] = topics
            return list(self.w3.eth.get_logs(flt))

        logs = self._paginate(fetch, from_block, to_block, page, "logs")
        return sorted(logs, key=lambda l: (l["blockNumber"], l["logIndex"]))

    def _paginate(self, fetch: Callable[[int, int], list], from_block, to_block, page, what: str) -> list:
        last = self.block_number() if to_block in (None, "latest") else int(to_block)
        start = max(0, int(from_block or 0))
        size = max(1, int(page or self.log_page))
        out: list = []
        while start <= last:
            end = min(last, start + size - 1)
            try:
                out.extend(fetch(start, end))
            except Exception as e:
                if _is_connection_error(e):
                    raise self._translate(e, what) from None
                if size > 1 and _looks_like_range_limit(e):
                    size = max(1, size // 2)
                    log.debug("%s: provider refused %d blocks, trying %d", what, end - start + 1, size)
                    continue
                raise self._translate(e, what) from None
            start = end + 1
        return out


def _looks_like_range_limit(exc: BaseException) -> bool:
    low = _message(exc).lower()
    return any(
        s in low
        for s in ("range", "too many", "limit", "exceed", "10000 results", "response size", "timeout", "query returned more")
    )
