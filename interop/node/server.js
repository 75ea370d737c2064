'use strict'

// The sharing side of npm p2p-socket / hypertele: a HyperDHT server on a key
// pair that, for every incoming encrypted connection, opens one TCP connection
// to the target and pipes the two. Prints {"publicKey":"<hex>","ready":true}
// once the server is announced.

const net = require('net')
const DHT = require('hyperdht')
const common = require('./common')
const { log, emit, fail, parseCli, requireOpt, parseHex, parsePort, parseBootstrap, dhtOptions, onShutdown, pipeBoth } = common

const USAGE =
  'node server.js --bootstrap host:port[,host:port...] --target-host H --target-port P [--seed HEX64 | --secret-key HEX128] [--host H] [--firewalled] [--relay HEX64]   (--relay names a blind relay for every connection: hyperdht relayThrough)'

function keyPairFrom(args) {
  if (args.seed !== undefined && args['secret-key'] !== undefined) fail(`give --seed or --secret-key, not both\nusage: ${USAGE}`)
  if (args.seed !== undefined) return DHT.keyPair(parseHex(args.seed, 32, 'seed'))
  if (args['secret-key'] !== undefined) {
    const secretKey = parseHex(args['secret-key'], 64, 'secret-key')
    // An Ed25519 secret key is seed || publicKey; re-deriving catches a corrupted key
    // here instead of as a baffling handshake failure on the client.
    const derived = DHT.keyPair(secretKey.subarray(0, 32))
    if (!derived.publicKey.equals(secretKey.subarray(32))) {
      fail('--secret-key: its second half is not the public key of its first half (expected seed || publicKey)')
    }
    return derived
  }
  return DHT.keyPair()
}

async function main() {
  const args = parseCli(
    {
      bootstrap: { type: 'string' },
      'target-host': { type: 'string' },
      'target-port': { type: 'string' },
      seed: { type: 'string' },
      'secret-key': { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      firewalled: { type: 'boolean', default: false },
      relay: { type: 'string' }
    },
    USAGE
  )
  const bootstrap = parseBootstrap(requireOpt(args, 'bootstrap', USAGE))
  const targetHost = requireOpt(args, 'target-host', USAGE)
  const targetPort = parsePort(requireOpt(args, 'target-port', USAGE), 'target-port')
  const keyPair = keyPairFrom(args)
  const relayThrough = args.relay ? parseHex(args.relay, 32, 'relay') : null

  const dht = new DHT(dhtOptions(bootstrap, args))
  let nextId = 1

  // Like npm p2p-socket: every peer is welcome.
  const server = dht.createServer({ firewall: () => false, relayThrough })
  server.on('connection', (encrypted) => {
    const id = `conn${nextId++}`
    log(`${id}: peer ${encrypted.remotePublicKey.toString('hex')} connected, dialing ${targetHost}:${targetPort}`)
    const tcp = net.connect({ host: targetHost, port: targetPort, allowHalfOpen: true })
    pipeBoth(id, { name: 'dht', stream: encrypted }, { name: 'tcp', stream: tcp })
  })

  onShutdown(async () => {
    await server.close()
    await dht.destroy()
  })

  await server.listen(keyPair)
  const publicKey = keyPair.publicKey.toString('hex')
  log(`listening on ${publicKey}, forwarding to ${targetHost}:${targetPort}`)
  emit({ publicKey, ready: true })
}

main().catch((err) => fail(err.stack || String(err)))
