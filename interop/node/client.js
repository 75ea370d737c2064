'use strict'

// The connecting side of npm p2p-socket: a TCP server on 127.0.0.1 where every
// accepted connection gets its own dht.connect() to the shared key, piped both
// ways. Prints {"port":N,"ready":true} once the TCP server listens.

const net = require('net')
const DHT = require('hyperdht')
const common = require('./common')
const { log, emit, fail, parseCli, requireOpt, parseHex, parsePort, parseBootstrap, dhtOptions, onShutdown, pipeBoth } = common

const USAGE =
  'node client.js --bootstrap host:port[,host:port...] --key HEX64 --port P [--host H] [--firewalled] [--relay HEX64]   (P = 0 picks a free port; --relay names a blind relay: hyperdht relayThrough)'

async function main() {
  const args = parseCli(
    {
      bootstrap: { type: 'string' },
      key: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      firewalled: { type: 'boolean', default: false },
      relay: { type: 'string' }
    },
    USAGE
  )
  const bootstrap = parseBootstrap(requireOpt(args, 'bootstrap', USAGE))
  const remoteKey = parseHex(requireOpt(args, 'key', USAGE), 32, 'key')
  const port = parsePort(requireOpt(args, 'port', USAGE), 'port')
  // hyperdht pairs at the relay and punches at once, and moves a relayed connection to the
  // punched path if that opens later.
  const relayThrough = args.relay ? parseHex(args.relay, 32, 'relay') : null

  const dht = new DHT(dhtOptions(bootstrap, args))
  // npm p2p-socket uses one client identity per process for all its connections.
  const keyPair = DHT.keyPair()
  let nextId = 1

  const tcpServer = net.createServer({ allowHalfOpen: true }, (tcp) => {
    const id = `conn${nextId++}`
    log(`${id}: tcp ${tcp.remoteAddress}:${tcp.remotePort} accepted, connecting to ${remoteKey.toString('hex')}`)
    const encrypted = dht.connect(remoteKey, { keyPair, relayThrough })
    encrypted.on('open', () => {
      const raw = encrypted.rawStream
      log(`${id}: dht connection open, raw stream to ${raw.remoteHost}:${raw.remotePort}`)
    })
    pipeBoth(id, { name: 'tcp', stream: tcp }, { name: 'dht', stream: encrypted })
  })

  onShutdown(async () => {
    tcpServer.close()
    await dht.destroy()
  })

  await new Promise((resolve, reject) => {
    tcpServer.once('error', reject)
    tcpServer.listen({ host: '127.0.0.1', port }, resolve)
  })
  const bound = tcpServer.address().port
  log(`listening on 127.0.0.1:${bound}`)
  emit({ port: bound, ready: true })
}

main().catch((err) => fail(err.stack || String(err)))
