'use strict'

// A hostile client of a blind relay, for the relay's limit tests: opens many sessions (each
// with a fresh key pair, which costs nothing), floods them with pair messages, and sends a
// frame of tiny unknown messages. It speaks protomux and blind-relay's messages itself, so it
// can send what the blind-relay client never would.
//
// Prints one JSON line {"ready":true,"opened":N,"refused":N,"answered":N,"ms":N} once it has
// done what it was asked (answered: pair replies the relay sent, which it only sends for pairs
// it joined), then {"closed":N} when it closed its sessions (after --hold-ms, or at the end).

const crypto = require('crypto')
const DHT = require('hyperdht')
const Protomux = require('protomux')
const c = require('compact-encoding')
const common = require('./common')
const { log, emit, parseCli, requireOpt, parseHex, parseBootstrap, dhtOptions, onShutdown } = common

const USAGE =
  'node relay-abuser.js --bootstrap host:port[,...] --relay HEX64 [--host IP] [--sessions N] ' +
  '[--pairs N] [--mutual N] [--junk-mib N] [--hold-ms MS]'

// How long a refused session takes to be closed by the relay, at most, on loopback.
const REFUSAL_WAIT_MS = 1500
// How long the relay has to answer what it was sent.
const SETTLE_MS = 2000

// blind-relay's `pair`: flags (bit 0: isInitiator), token, stream id, sequence number.
const pairEncoding = {
  preencode(state, m) {
    state.end += 1 + 32
    c.uint.preencode(state, m.id)
    c.uint.preencode(state, m.seq)
  },
  encode(state, m) {
    c.uint8.encode(state, m.isInitiator ? 1 : 0)
    c.fixed32.encode(state, m.token)
    c.uint.encode(state, m.id)
    c.uint.encode(state, m.seq)
  },
  decode(state) {
    const flags = c.uint8.decode(state)
    return { isInitiator: (flags & 1) !== 0, token: c.fixed32.decode(state), id: c.uint.decode(state), seq: c.uint.decode(state) }
  }
}

function number(args, name) {
  const n = Number(args[name])
  if (!Number.isInteger(n) || n < 0) common.fail(`--${name} must be a whole number\nusage: ${USAGE}`)
  return n
}

async function openSession(dht, relayKey, index) {
  const keyPair = DHT.keyPair()
  const socket = dht.connect(relayKey, { keyPair })
  const session = { index, socket, keyPair, closed: false }
  socket.on('error', (err) => log(`session ${index}: ${err.message}`))
  socket.on('close', () => {
    session.closed = true
  })
  await new Promise((resolve) => {
    socket.once('open', resolve)
    socket.once('close', resolve)
  })
  return session
}

function openChannel(session, onpair) {
  const mux = Protomux.from(session.socket)
  const channel = mux.createChannel({ protocol: 'blind-relay', id: session.keyPair.publicKey })
  const pair = channel.addMessage({ encoding: pairEncoding, onmessage: onpair })
  channel.open()
  return { channel, pair }
}

// A protomux batch on channel 1 of `mib` MiB of two-byte messages of an unknown type.
function junkFrame(mib) {
  const count = Math.floor((mib * 1024 * 1024) / 2)
  const frame = Buffer.alloc(3 + count * 2, 9)
  frame[0] = 0
  frame[1] = 0
  frame[2] = 1
  for (let i = 3; i < frame.length; i += 2) frame[i] = 1
  return frame
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function main() {
  const args = parseCli(
    {
      bootstrap: { type: 'string' },
      relay: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      sessions: { type: 'string', default: '1' },
      pairs: { type: 'string', default: '0' },
      mutual: { type: 'string', default: '0' },
      'junk-mib': { type: 'string', default: '0' },
      'hold-ms': { type: 'string', default: '0' }
    },
    USAGE
  )
  const bootstrap = parseBootstrap(requireOpt(args, 'bootstrap', USAGE))
  const relayKey = parseHex(requireOpt(args, 'relay', USAGE), 32, 'relay')
  const dht = new DHT(dhtOptions(bootstrap, { host: args.host }))
  const started = Date.now()

  const sessions = []
  for (let i = 0; i < number(args, 'sessions'); i++) sessions.push(await openSession(dht, relayKey, i))
  await sleep(REFUSAL_WAIT_MS)
  const open = sessions.filter((s) => !s.closed)

  let answered = 0
  const channels = open.map((s) => openChannel(s, () => answered++))
  for (const { pair } of channels) {
    for (let i = 0; i < number(args, 'pairs'); i++) {
      pair.send({ isInitiator: true, token: crypto.randomBytes(32), id: i + 1, seq: 0 })
    }
  }
  const mutual = number(args, 'mutual')
  if (mutual > 0 && channels.length >= 2) {
    for (let i = 0; i < mutual; i++) {
      const token = crypto.randomBytes(32)
      channels[0].pair.send({ isInitiator: true, token, id: 2 * i + 1, seq: 0 })
      channels[1].pair.send({ isInitiator: false, token, id: 2 * i + 2, seq: 0 })
    }
  }
  const junk = number(args, 'junk-mib')
  if (junk > 0 && open.length > 0) open[0].socket.write(junkFrame(junk))
  await sleep(SETTLE_MS)

  emit({
    ready: true,
    opened: open.filter((s) => !s.closed).length,
    refused: sessions.length - open.length,
    answered,
    ms: Date.now() - started
  })

  const close = async () => {
    for (const s of sessions) s.socket.end()
    await sleep(500)
    emit({ closed: sessions.length })
    await dht.destroy()
  }
  const hold = number(args, 'hold-ms')
  if (hold > 0) {
    await sleep(hold)
    await close()
    process.exit(0)
  }
  onShutdown(close)
}

main().catch((err) => common.fail(err.stack || err.message))
