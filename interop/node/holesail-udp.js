'use strict'

// holesail 2.4.1's UDP mode for tests/udp.rs, through its library as its users run it, on the
// Bare runtime it is built for (under Node it fails at require time):
//
//   node_modules/.bin/bare holesail-udp.js --mode server --bootstrap H:P --port P [--host H]
//     a holesail UDP server in public mode forwarding to the UDP service at host:port;
//     prints {"ready":true,"key":"<hex public key>","url":"hs://0000..."}
//   node_modules/.bin/bare holesail-udp.js --mode client --bootstrap H:P --key HEX --port P [--host H]
//     a holesail UDP client listening on host:port; prints {"ready":true,"port":P}
//   node_modules/.bin/bare holesail-udp.js --mode junk --bootstrap H:P --key HEX
//     a raw hyperdht connection to a UDP share: one framed datagram, whose framed echo it
//     waits for ({"echoed":true}), then a frame longer than any datagram; prints
//     {"closed":true} when the share closes the connection.
//
// holesail has no bootstrap option: its server and client make `new HyperDHT()`, which takes
// hyperdht's BOOTSTRAP array, so this script refills that array before they start. udp: true
// is passed to the client explicitly (it would otherwise look for the server's DHT record).
// stdout carries only JSON lines for the harness; the script exits when its stdin closes.

const process = require('bare-process')
const HyperDHT = require('hyperdht')
const Holesail = require('holesail')
const z32 = require('z32')

function log(...args) {
  console.error('[holesail-udp]', ...args)
}

function emit(obj) {
  console.log(JSON.stringify(obj))
}

function fail(message) {
  log('error:', message)
  process.exit(2)
}

const USAGE =
  'bare holesail-udp.js --mode server|client|junk --bootstrap HOST:PORT[,...] [--key HEX] [--port P] [--host H]'

function parseCli(argv) {
  const known = ['mode', 'bootstrap', 'key', 'port', 'host']
  const values = {}
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '')
    if (!known.includes(name) || argv[i + 1] === undefined) fail(`bad argument ${argv[i]}\nusage: ${USAGE}`)
    values[name] = argv[i + 1]
  }
  if (!['server', 'client', 'junk'].includes(values.mode)) fail(`--mode must be server, client or junk\nusage: ${USAGE}`)
  if (!values.bootstrap) fail(`--bootstrap is required\nusage: ${USAGE}`)
  if (values.mode !== 'junk' && values.port === undefined) fail(`--port is required\nusage: ${USAGE}`)
  if (values.mode !== 'server' && !/^[0-9a-fA-F]{64}$/.test(values.key || '')) {
    fail(`--key must be 64 hex characters\nusage: ${USAGE}`)
  }
  return values
}

const args = parseCli(process.argv.slice(2))
const host = args.host || '127.0.0.1'
const port = Number(args.port)
HyperDHT.BOOTSTRAP.splice(0, HyperDHT.BOOTSTRAP.length, ...args.bootstrap.split(','))

let resource = null
process.stdin.on('data', () => {})
process.stdin.on('end', async () => {
  log('stdin closed, shutting down')
  setTimeout(() => process.exit(0), 3000)
  try {
    if (resource) await resource.close()
  } catch (err) {
    log('teardown error:', err)
  }
  process.exit(0)
})

function frame(payload) {
  const out = Buffer.alloc(4 + payload.length)
  out.writeUInt32BE(payload.length, 0)
  payload.copy(out, 4)
  return out
}

async function main() {
  if (args.mode === 'server') {
    const hs = new Holesail({ server: true, secure: false, udp: true, host, port })
    resource = hs
    await hs.ready()
    const key = Buffer.from(z32.decode(hs.info.publicKey)).toString('hex')
    emit({ ready: true, key, url: hs.info.url })
  } else if (args.mode === 'client') {
    const key = z32.encode(Buffer.from(args.key, 'hex'))
    const hs = new Holesail({ client: true, key, udp: true, host, port })
    resource = hs
    await hs.ready()
    emit({ ready: true, port: hs.dht.proxy.address().port })
  } else {
    const dht = new HyperDHT({ bootstrap: args.bootstrap.split(','), port: [0, 0], ephemeral: true })
    resource = { close: () => dht.destroy() }
    const stream = dht.connect(Buffer.from(args.key, 'hex'))
    stream.on('error', (err) => log('stream error:', err.message))
    stream.on('close', () => emit({ closed: true }))
    let echoed = false
    stream.on('data', (data) => {
      log(`got ${data.length} bytes`)
      if (echoed) return
      echoed = true
      emit({ echoed: true })
      // One past the largest datagram, then bytes that would be its start.
      const junk = Buffer.alloc(4 + 16)
      junk.writeUInt32BE(65536, 0)
      stream.write(junk)
    })
    stream.on('open', () => stream.write(frame(Buffer.from('ping'))))
    emit({ ready: true })
  }
}

main().catch((err) => fail(err.stack || String(err)))
