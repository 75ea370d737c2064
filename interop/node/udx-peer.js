'use strict'

// A bare udx-native stream endpoint for the p2p-udx interop tests and benchmark.
//
// It binds 127.0.0.1 on a free port, prints {"port":P} on stdout, connects one stream
// to the peer, sends --send bytes (random, or a repeated buffer with --fast), ends its
// write side, reads until the peer's END and finally prints one JSON result line:
//   {"sent":N,"sentSha256":hex,"received":M,"receivedSha256":hex,"recvMs":T}
// With --destroy-after it destroys the stream once that many bytes arrived and prints
// {"destroyed":true,...}; a stream error (such as the peer's DESTROY) prints {"error":code}.
// The peer's port comes from --remote-port or, when that is absent, from the first
// stdin line ({"port":P}) so two of these scripts can be paired by a harness.
// The script exits when stdin closes, so it never outlives the process that started it.

const crypto = require('crypto')
const UDX = require('udx-native')
const { log, emit, fail, parseCli, parsePort } = require('./common')

const USAGE =
  'node udx-peer.js --local-id N --remote-id N [--remote-port P] [--send BYTES] [--fast] [--no-hash] [--destroy-after BYTES]'

const opts = parseCli(
  {
    'local-id': { type: 'string', default: '1' },
    'remote-id': { type: 'string', default: '2' },
    'remote-port': { type: 'string' },
    send: { type: 'string', default: '0' },
    fast: { type: 'boolean', default: false },
    'no-hash': { type: 'boolean', default: false },
    'destroy-after': { type: 'string' }
  },
  USAGE
)

const localId = Number(opts['local-id'])
const remoteId = Number(opts['remote-id'])
const toSend = Number(opts.send)
if (!Number.isInteger(localId) || !Number.isInteger(remoteId) || !Number.isSafeInteger(toSend)) {
  fail(`ids and --send must be integers\nusage: ${USAGE}`)
}
const hashing = !opts['no-hash']
const destroyAfter = opts['destroy-after'] === undefined ? null : Number(opts['destroy-after'])

// Writes are this big: large enough that JS overhead per write is negligible.
const CHUNK = 64 * 1024

const udx = new UDX()
const socket = udx.createSocket()
socket.bind(0, '127.0.0.1')
emit({ port: socket.address().port })

const stream = udx.createStream(localId)
// A stream error (e.g. the peer's DESTROY) is a result the harness may be waiting for.
stream.on('error', (err) => {
  emit({ error: err.code || err.message })
  process.exit(3)
})

let stdinBuf = ''
let remotePort = opts['remote-port'] === undefined ? null : parsePort(opts['remote-port'], 'remote-port')

process.stdin.on('data', (data) => {
  if (remotePort !== null) return
  stdinBuf += data.toString()
  const nl = stdinBuf.indexOf('\n')
  if (nl === -1) return
  remotePort = parsePort(JSON.parse(stdinBuf.slice(0, nl)).port, 'port from stdin')
  start()
})
process.stdin.once('end', () => {
  log('stdin closed, exiting')
  process.exit(0)
})
process.stdin.resume()

if (remotePort !== null) start()

function start() {
  stream.connect(socket, remoteId, remotePort, '127.0.0.1')
  const result = { sent: 0, sentSha256: null, received: 0, receivedSha256: null, recvMs: 0 }
  let pending = 2
  const done = () => {
    if (--pending > 0) return
    emit(result)
  }

  const recvHash = crypto.createHash('sha256')
  let firstByteAt = 0
  stream.on('data', (chunk) => {
    if (result.received === 0) firstByteAt = performance.now()
    result.received += chunk.length
    if (hashing) recvHash.update(chunk)
    if (destroyAfter !== null && !stream.destroying && result.received >= destroyAfter) {
      emit({ destroyed: true, received: result.received })
      stream.destroy()
    }
  })
  stream.on('end', () => {
    result.recvMs = firstByteAt ? performance.now() - firstByteAt : 0
    result.receivedSha256 = hashing ? recvHash.digest('hex') : null
    done()
  })
  stream.on('close', () => socket.close())

  const sendHash = crypto.createHash('sha256')
  const fixed = crypto.randomBytes(CHUNK)
  const write = () => {
    while (result.sent < toSend) {
      const n = Math.min(CHUNK, toSend - result.sent)
      // a fresh buffer per write: udx-native keeps a reference until the data is acked
      const buf = opts.fast ? fixed.subarray(0, n) : crypto.randomBytes(n)
      if (hashing) sendHash.update(buf)
      result.sent += n
      if (!stream.write(buf)) {
        stream.once('drain', write)
        return
      }
    }
    result.sentSha256 = hashing ? sendHash.digest('hex') : null
    stream.end()
    stream.once('finish', done)
  }
  write()
}
