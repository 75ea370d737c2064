'use strict'

// A Node hyperdht server and client, each on a DHT node of its own, that may only meet
// through a blind relay named with `relayThrough`: the server refuses to punch and both keep
// their LAN addresses to themselves, so on one machine the relay is the only path. The
// server forwards every connection to the target (like server.js), the client listens on
// 127.0.0.1 (like client.js). Prints {"port":N,"publicKey":"<hex>","ready":true} once both are
// up, and {"connection":N,"remote":"host:port"} (where its packets go) for every connection the
// client opens.

const net = require('net')
const DHT = require('hyperdht')
const common = require('./common')
const { log, emit, fail, parseCli, requireOpt, parseHex, parsePort, parseBootstrap, dhtOptions, onShutdown, pipeBoth } = common

const USAGE =
  'node relayed-pair.js --bootstrap host:port[,...] --relay HEX64 --target-host H --target-port P [--relay-side client|server]'

async function main() {
  const args = parseCli(
    {
      bootstrap: { type: 'string' },
      relay: { type: 'string' },
      'target-host': { type: 'string' },
      'target-port': { type: 'string' },
      'relay-side': { type: 'string', default: 'client' },
      host: { type: 'string', default: '127.0.0.1' }
    },
    USAGE
  )
  const bootstrap = parseBootstrap(requireOpt(args, 'bootstrap', USAGE))
  const relay = parseHex(requireOpt(args, 'relay', USAGE), 32, 'relay')
  const targetHost = requireOpt(args, 'target-host', USAGE)
  const targetPort = parsePort(requireOpt(args, 'target-port', USAGE), 'target-port')
  const side = args['relay-side']
  if (side !== 'client' && side !== 'server') fail(`--relay-side must be client or server\nusage: ${USAGE}`)

  // Firewalled: each believes it is behind a NAT, so neither offers to be dialled.
  const dhtArgs = { host: args.host, firewalled: true }
  const serverDht = new DHT(dhtOptions(bootstrap, dhtArgs))
  const clientDht = new DHT(dhtOptions(bootstrap, dhtArgs))

  let nextServerId = 1
  const server = serverDht.createServer({
    firewall: () => false,
    holepunch: () => false, // `false` itself would mean "default" (true) in server.js
    shareLocalAddress: false,
    relayThrough: side === 'server' ? relay : null
  })
  server.on('connection', (encrypted) => {
    const id = `srv${nextServerId++}`
    log(`${id}: peer connected, dialing ${targetHost}:${targetPort}`)
    const tcp = net.connect({ host: targetHost, port: targetPort, allowHalfOpen: true })
    pipeBoth(id, { name: 'dht', stream: encrypted }, { name: 'tcp', stream: tcp })
  })
  const keyPair = DHT.keyPair()
  await server.listen(keyPair)

  const clientKeyPair = DHT.keyPair()
  let nextClientId = 1
  const tcpServer = net.createServer({ allowHalfOpen: true }, (tcp) => {
    const n = nextClientId++
    const id = `cli${n}`
    const encrypted = clientDht.connect(keyPair.publicKey, {
      keyPair: clientKeyPair,
      relayThrough: side === 'client' ? relay : null,
      localConnection: false,
      fastOpen: false
    })
    encrypted.on('open', () => {
      const raw = encrypted.rawStream
      const remote = `${raw.remoteHost}:${raw.remotePort}`
      log(`${id}: open, raw stream to ${remote}`)
      emit({ connection: n, remote })
    })
    pipeBoth(id, { name: 'tcp', stream: tcp }, { name: 'dht', stream: encrypted })
  })

  onShutdown(async () => {
    tcpServer.close()
    await server.close()
    await Promise.all([serverDht.destroy(), clientDht.destroy()])
  })

  await new Promise((resolve, reject) => {
    tcpServer.once('error', reject)
    tcpServer.listen({ host: '127.0.0.1', port: 0 }, resolve)
  })
  const port = tcpServer.address().port
  log(`server ${keyPair.publicKey.toString('hex')}, client listening on 127.0.0.1:${port}, relay on the ${side} side`)
  emit({ port, publicKey: keyPair.publicKey.toString('hex'), ready: true })
}

main().catch((err) => fail(err.stack || String(err)))
