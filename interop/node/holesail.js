'use strict'

// The real holesail 2.4.1 (its library, `require('holesail')`) for the Rust tests. Run it with
// the Bare runtime: holesail loads Bare-only modules and fails under Node.
//
//   bare holesail.js --bootstrap HOST:PORT --role server --host H --port P [--secure] [--key K]
//   bare holesail.js --bootstrap HOST:PORT --role client --key URL [--host H] [--port P]
//
// Prints one JSON line once ready: holesail's `info` ({url, key, port, host, secure, ...}).
// Logs go to stderr. Exits when stdin closes, so it cannot outlive its test.
//
// holesail creates its HyperDHT with no options (the public network, fixed port 49737). The
// tests need it on their own loopback DHT: before holesail is loaded, the module cache's
// `hyperdht` is replaced by a subclass that adds the test's bootstrap node, binds 127.0.0.1 on
// a free port and keeps everything else (static keyPair and all) as it was.

const process = require('bare-process')

function log(...args) {
  process.stderr.write('[holesail.js] ' + args.join(' ') + '\n')
}

function fail(message) {
  log('error:', message)
  process.exit(2)
}

const USAGE =
  'bare holesail.js --bootstrap HOST:PORT --role server|client [--key K] [--secure] [--host H] [--port P]'

function parseArgs(argv) {
  const args = { secure: false }
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i]
    if (name === '--secure') {
      args.secure = true
      continue
    }
    if (!['--bootstrap', '--role', '--key', '--host', '--port'].includes(name)) {
      fail(`unknown argument ${JSON.stringify(name)}\nusage: ${USAGE}`)
    }
    if (i + 1 >= argv.length) fail(`${name} needs a value\nusage: ${USAGE}`)
    args[name.slice(2)] = argv[++i]
  }
  if (!args.bootstrap) fail(`--bootstrap is required\nusage: ${USAGE}`)
  if (args.role !== 'server' && args.role !== 'client') fail(`--role must be server or client\nusage: ${USAGE}`)
  if (args.port !== undefined) {
    const port = Number(args.port)
    if (!Number.isInteger(port) || port <= 0 || port > 65535) fail(`--port must be 1..65535, got ${args.port}`)
    args.port = port
  }
  return args
}

function bootstrapNodes(list) {
  return list.split(',').map((entry) => {
    const at = entry.lastIndexOf(':')
    const port = Number(entry.slice(at + 1))
    if (at <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) fail(`bad --bootstrap entry ${entry}`)
    return { host: entry.slice(0, at), port }
  })
}

function joinTestDht(bootstrap) {
  const HyperDHT = require('hyperdht')
  const cached = Object.keys(require.cache).filter((k) => k.endsWith('/node_modules/hyperdht/index.js'))
  if (cached.length !== 1) fail(`expected one hyperdht in the module cache, found ${cached.length}`)
  class TestDHT extends HyperDHT {
    constructor(opts = {}) {
      // [0, 0]: dht-rpc's "any free port" (a plain 0 means its fixed default port).
      super({ ...opts, bootstrap, host: '127.0.0.1', port: [0, 0] })
    }
  }
  require.cache[cached[0]].exports = TestDHT
  if (require('hyperdht') !== TestDHT) fail('could not replace hyperdht in the module cache')
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  joinTestDht(bootstrapNodes(args.bootstrap))
  const Holesail = require('holesail')

  const opts =
    args.role === 'server'
      ? { server: true, host: args.host || '127.0.0.1', port: args.port, secure: args.secure, key: args.key }
      : { client: true, key: args.key, host: args.host, port: args.port }
  const hs = new Holesail(opts)
  await hs.ready()
  const info = hs.info
  log(`${args.role} ready: ${JSON.stringify(info)}`)
  process.stdout.write(JSON.stringify(info) + '\n')

  const stop = async (why) => {
    log(`shutting down (${why})`)
    setTimeout(() => process.exit(0), 3000)
    try {
      await hs.close()
    } finally {
      process.exit(0)
    }
  }
  process.stdin.on('data', () => {})
  process.stdin.once('end', () => stop('stdin closed'))
  process.once('SIGTERM', () => stop('SIGTERM'))
}

main().catch((err) => fail(err.stack || String(err)))
