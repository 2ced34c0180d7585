"""The local Helia node through the IPFS backend: Kubo's CIDs, verified reads, fast failures."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import require_tool
from ledger.services import ipfs_node
from ledger.store.cid import CHUNK_SIZE, MAX_LINKS, ImportOptions, cid_of_bytes
from ledger.config import Settings
from ledger.errors import IntegrityError, NotFoundError, StorageError, StorageUnreachable
from ledger.services.procs import pid_alive
from ledger.store import EmbeddedStore, open_store
from ledger.store.ipfs import IpfsStore


def rnd(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture
def ipfs(settings: Settings):
    """A real local node on a free port for this test; stopped by PID afterwards."""
    try:
        ipfs_node.node_binary()
    except Exception as e:
        pytest.skip(f"the local IPFS node is not installed ({e})")
    up = ipfs_node.ipfs_up(settings, port=0)
    assert up.started
    try:
        yield up.info
    finally:
        ipfs_node.ipfs_down(settings)
        assert not pid_alive(up.info.pid)


@pytest.fixture
def ipfs_store(settings, ipfs) -> IpfsStore:
    s = open_store(settings.replace(storage="ipfs", ipfs_timeout=5.0))
    assert isinstance(s, IpfsStore) and s.api == ipfs.url
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.filterwarnings("ignore:The .strict. parameter:FutureWarning")  # ipfshttpclient vs urllib3 2

SIZES = [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, MAX_LINKS * CHUNK_SIZE + 1]


@pytest.mark.parametrize("version", [0, 1])
def test_same_cids_as_embedded_store_and_ipfs_cid(settings, ipfs_store, tmp_path, version):
    exe = require_tool("ipfs_cid") if version == 0 else None
    embedded = EmbeddedStore(settings.store_dir)
    opts = ImportOptions.for_version(version)
    for size in SIZES:
        data = rnd(size, seed=size)
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        via_ipfs = ipfs_store.put(path, options=opts)
        assert via_ipfs == embedded.put(path, options=opts)
        assert via_ipfs.digest == hashlib.sha256(data).digest() and via_ipfs.size == size
        assert ipfs_store.put(data, options=opts) == via_ipfs
        assert ipfs_store.put(io.BytesIO(data), options=opts) == via_ipfs
        if exe:
            oracle = json.loads(subprocess.run([exe, str(path)], capture_output=True, text=True, check=True).stdout)
            assert via_ipfs.cid == oracle["CIDv0"]
        assert ipfs_store.has(via_ipfs.cid)
        assert ipfs_store.get(via_ipfs.cid, via_ipfs.digest) == data


def test_add_reports_kubo_cumulative_size(ipfs_store):
    for size in (0, 10, CHUNK_SIZE + 1, 3 * CHUNK_SIZE):
        data = rnd(size, seed=2)
        res = ipfs_store.client.add_bytes(data, opts={"cid-version": 0, "raw-leaves": "false", "chunker": "size-262144"})
        mine = cid_of_bytes(data)
        assert res == mine.cid
        full = ipfs_store.client.add(io.BytesIO(data), cid_version=0, raw_leaves=False, chunker="size-262144")
        assert full["Hash"] == mine.cid and int(full["Size"]) == mine.dag_size


def test_reads_are_verified(ipfs_store, tmp_path):
    data = rnd(CHUNK_SIZE * 2 + 7)
    obj = ipfs_store.put(data)
    out = ipfs_store.get_to_file(obj.cid, obj.digest, tmp_path / "out.bin")
    assert out.read_bytes() == data
    assert ipfs_store.verify(obj.cid, obj.digest) == len(data)
    wrong = hashlib.sha256(b"nope").digest()
    with pytest.raises(IntegrityError) as e:
        ipfs_store.get(obj.cid, wrong)
    assert obj.cid in str(e.value) and wrong.hex() in str(e.value) and obj.digest.hex() in str(e.value)
    with pytest.raises(IntegrityError):
        ipfs_store.get_to_file(obj.cid, wrong, tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(StorageError):
        ipfs_store.get(obj.cid, obj.digest, max_size=len(data) - 1)


def test_tampered_block_on_the_node_is_caught(settings, ipfs_store):
    data = rnd(CHUNK_SIZE * 3)
    obj = ipfs_store.put(data)
    blocks = sorted((settings.ipfs_dir / "repo" / "blocks").rglob("*.data"), key=lambda p: p.stat().st_size)
    biggest = blocks[-1]
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    # Helia serves local blocks without re-hashing them: the digest check is what catches it.
    with pytest.raises(IntegrityError) as e:
        ipfs_store.get(obj.cid, obj.digest)
    assert obj.cid in str(e.value)


def test_missing_cid_fails_fast(ipfs_store):
    absent = cid_of_bytes(b"nobody stored this").cid
    t = time.monotonic()
    with pytest.raises(NotFoundError) as e:
        ipfs_store.get(absent, bytes(32))
    assert time.monotonic() - t < 3.0
    assert absent in str(e.value)
    assert not ipfs_store.has(absent)
    with pytest.raises(NotFoundError):
        ipfs_store.pin(absent)
    with pytest.raises(NotFoundError):
        ipfs_store.verify(absent, bytes(32))


def test_pins_and_rpc_endpoints(ipfs, ipfs_store):
    v0 = ipfs_store.put(b"pinned v0")
    v1 = ipfs_store.put(rnd(CHUNK_SIZE + 1), options=ImportOptions(cid_version=1))
    ipfs_store.pin(v0.cid)  # already pinned by add: still fine
    keys = ipfs_node.api_call(ipfs.url, "pin/ls")["Keys"]
    assert v0.cid in keys and v1.cid in keys and keys[v0.cid]["Type"] == "recursive"
    assert ipfs_node.api_call(ipfs.url, "pin/ls", arg=v0.cid)["Keys"] == {v0.cid: {"Type": "recursive"}}
    stat = ipfs_node.api_call(ipfs.url, "block/stat", arg=v0.cid)
    assert stat["Key"] == v0.cid and stat["Size"] == len(b"pinned v0") + 8
    ident = ipfs_node.api_call(ipfs.url, "id")
    assert ident["ID"].startswith("12D3KooW")
    assert ipfs_node.api_call(ipfs.url, "version")["Version"]
    assert ipfs_store.client.cat(v0.cid) == b"pinned v0"
    assert ipfs_store.client.cat(v0.cid, offset=2, length=3) == b"nne"


def test_up_is_idempotent_and_status_reports(settings, ipfs):
    again = ipfs_node.ipfs_up(settings, port=0)
    assert not again.started and again.info.pid == ipfs.pid
    st = ipfs_node.ipfs_status(settings)
    assert st["running"] and st["answering"] and st["pid"] == ipfs.pid
    assert ipfs_node.resolve_api(settings) == ipfs.url
    # an explicit API wins, in any of the accepted spellings
    assert ipfs_node.resolve_api(settings.replace(ipfs_api=f"http://127.0.0.1:{ipfs.port}")) == ipfs.url


def test_node_survives_restart_with_its_blocks(settings, ipfs):
    s = open_store(settings.replace(storage="ipfs"))
    obj = s.put(b"persistent")
    ipfs_node.ipfs_down(settings)
    assert not pid_alive(ipfs.pid)
    up = ipfs_node.ipfs_up(settings, port=0)
    s2 = open_store(settings.replace(storage="ipfs"))
    assert s2.get(obj.cid, obj.digest) == b"persistent"
    assert obj.cid in ipfs_node.api_call(up.info.url, "pin/ls")["Keys"]


def test_unreachable_api_names_the_address(settings):
    port = free_port()
    api = f"/ip4/127.0.0.1/tcp/{port}/http"
    store = IpfsStore(api, timeout=2)
    for call in (
        lambda: store.put(b"x"),
        lambda: store.get(cid_of_bytes(b"x").cid, bytes(32)),
        lambda: store.has(cid_of_bytes(b"x").cid),
    ):
        t = time.monotonic()
        with pytest.raises(StorageUnreachable) as e:
            call()
        assert api in str(e.value)
        assert time.monotonic() - t < 3
    # no local node and no --ipfs-api: a clear error, not a hang
    with pytest.raises(StorageUnreachable) as e:
        open_store(settings.replace(storage="ipfs"))
    assert "ledger ipfs up" in str(e.value)


def test_a_node_dropping_the_connection_mid_request_is_an_outage():
    """A node killed while it serves closes the socket with no answer: that is the
    storage going away (waited out by the roles), not a failed request."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def hang_up():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    api = f"/ip4/127.0.0.1/tcp/{srv.getsockname()[1]}/http"
    store = IpfsStore(api, timeout=2)
    try:
        for call in (lambda: store.has(cid_of_bytes(b"x").cid),
                     lambda: store.reachable(cid_of_bytes(b"x").cid),
                     lambda: store.get(cid_of_bytes(b"x").cid, bytes(32))):
            with pytest.raises(StorageUnreachable) as e:
                call()
            assert api in str(e.value)
    finally:
        stop.set()
        t.join()
        srv.close()


def test_address_forms():
    assert ipfs_node.to_multiaddr("http://127.0.0.1:5001") == "/ip4/127.0.0.1/tcp/5001/http"
    assert ipfs_node.to_multiaddr("localhost:5001") == "/dns/localhost/tcp/5001/http"
    assert ipfs_node.to_multiaddr("/ip4/10.0.0.1/tcp/5001/http") == "/ip4/10.0.0.1/tcp/5001/http"
    assert ipfs_node.http_url("/ip4/127.0.0.1/tcp/5001/http") == "http://127.0.0.1:5001"


def test_a_node_that_never_answers_times_out_as_missing():
    """Like a Kubo daemon searching the network for a CID nobody has: give up after ipfs_timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts connections (the kernel does), never answers
    try:
        port = srv.getsockname()[1]
        store = IpfsStore(f"/ip4/127.0.0.1/tcp/{port}/http", timeout=1.0)
        cid = cid_of_bytes(b"somewhere out there").cid
        t = time.monotonic()
        with pytest.raises(NotFoundError) as e:
            store.get(cid, bytes(32))
        assert time.monotonic() - t < 5
        assert cid in str(e.value) and "1s" in str(e.value)
    finally:
        srv.close()


@pytest.mark.parametrize("version", [0, 1])
def test_cat_ranges_across_blocks(ipfs_store, version):
    data = rnd(CHUNK_SIZE * 3 + 100, seed=5)
    obj = ipfs_store.put(data, options=ImportOptions.for_version(version))
    for offset, length in [(0, 1), (CHUNK_SIZE - 3, 10), (CHUNK_SIZE * 2 + 50, CHUNK_SIZE + 50), (len(data) - 5, 100)]:
        assert ipfs_store.client.cat(obj.cid, offset=offset, length=length) == data[offset:offset + length]
    assert ipfs_store.client.cat(obj.cid, offset=CHUNK_SIZE + 7) == data[CHUNK_SIZE + 7:]


def _post_add(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{ipfs_node.http_url(url)}/api/v0/add?pin=false", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read().decode().splitlines()[0])
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def test_add_refuses_malformed_multipart_and_keeps_serving(ipfs, ipfs_store):
    """The node's multipart parsing (busboy): every hostile body is a 400 with Kubo's error
    shape, never a crash or a hang, and the node goes on serving."""
    b = "xYz"
    part = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a%20b.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    whole = part + b"hello" + f"\r\n--{b}--\r\n".encode()
    status, doc = _post_add(ipfs.url, whole, f"multipart/form-data; boundary={b}")
    assert status == 200 and doc["Name"] == "a b.bin" and doc["Hash"] == cid_of_bytes(b"hello").cid
    cases = {
        "truncated inside the file": (part + b"hel", f"multipart/form-data; boundary={b}"),
        "no boundary": (whole, "multipart/form-data"),
        "not multipart": (b"hello", "application/octet-stream"),
        "a field, no file": (f"--{b}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--{b}--\r\n".encode(),
                             f"multipart/form-data; boundary={b}"),
        "garbage": (b"\x00\xff" * 100, f"multipart/form-data; boundary={b}"),
    }
    for what, (body, ctype) in cases.items():
        status, doc = _post_add(ipfs.url, body, ctype)
        assert status == 400 and doc["Type"] == "error", (what, status, doc)
        assert any(m in doc["Message"] for m in ("malformed multipart", "expects a multipart", "no file")), (what, doc)
    assert ipfs_store.get(ipfs_store.put(b"still serving").cid, hashlib.sha256(b"still serving").digest())
