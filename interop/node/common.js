'use strict'

// Shared plumbing for the interop fixtures. The Rust tests start these scripts as
// child processes: stdout carries only JSON lines for the harness, everything
// human-readable goes to stderr, and every script must die with its harness.

const path = require('path')
const { parseArgs } = require('util')

const NAME = path.basename(require.main ? require.main.filename : process.argv[1], '.js')

// How long a graceful shutdown may take before we exit anyway: a fixture that
// hangs in teardown must never outlive the test that started it.
const SHUTDOWN_GRACE_MS = 3000

function log(...args) {
  console.error(`[${NAME}]`, ...args)
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fail(message) {
  log('error:', message)
  process.exit(2)
}

function parseCli(options, usage) {
  try {
    return parseArgs({ options, strict: true, allowPositionals: false }).values
  } catch (err) {
    fail(`${err.message}\nusage: ${usage}`)
  }
}

function requireOpt(values, name, usage) {
  if (values[name] === undefined) fail(`--${name} is required\nusage: ${usage}`)
  return values[name]
}

function parseHex(value, bytes, name) {
  if (typeof value !== 'string' || !new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(value)) {
    fail(`--${name} must be ${bytes * 2} hex characters (${bytes} bytes), got ${JSON.stringify(value)}`)
  }
  return Buffer.from(value, 'hex')
}

function parsePort(value, name) {
  const port = Number(value)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    fail(`--${name} must be a TCP port 0..65535, got ${JSON.stringify(value)}`)
  }
  return port
}

// "host:port[,host:port...]" -> [{ host, port }]
function parseBootstrap(value) {
  return value.split(',').map((entry) => {
    const idx = entry.lastIndexOf(':')
    const host = entry.slice(0, idx)
    const port = Number(entry.slice(idx + 1))
    if (idx <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      fail(`--bootstrap entry ${JSON.stringify(entry)} is not host:port`)
    }
    return { host, port }
  })
}

// dht-rpc treats an array as a port range to try; [0, 0] is an empty range, so it
// binds an OS-chosen free port. A plain 0 would fall back to hyperdht's fixed
// default 49737, which parallel test runs would fight over.
const FREE_UDP_PORT = [0, 0]

// The DHT node of a client or server fixture: on `--host` (127.0.0.1 unless it runs in a
// network lab's namespace), and with `--firewalled` it keeps believing it is behind a NAT
// (dht-rpc's quick firewall test is what would find a loopback node reachable), so it offers
// and takes hole punching as it would behind a real NAT.
function dhtOptions(bootstrap, args) {
  return {
    bootstrap,
    host: args.host,
    port: FREE_UDP_PORT,
    ephemeral: true,
    quickFirewall: !args.firewalled
  }
}

// Runs `teardown` once on SIGTERM, SIGINT or when stdin closes (the harness died
// or dropped its end of the pipe), then exits.
function onShutdown(teardown) {
  let stopping = false
  const stop = (why) => {
    if (stopping) return
    stopping = true
    log(`shutting down (${why})`)
    setTimeout(() => {
      log(`teardown did not finish within ${SHUTDOWN_GRACE_MS} ms, exiting anyway`)
      process.exit(0)
    }, SHUTDOWN_GRACE_MS).unref()
    Promise.resolve()
      .then(teardown)
      .catch((err) => log('teardown error:', err))
      .finally(() => process.exit(0))
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
  process.stdin.on('data', () => {})
  process.stdin.once('end', () => stop('stdin closed'))
  process.stdin.once('error', () => stop('stdin error'))
  process.stdin.resume()
  return stop
}

function isClosed(stream) {
  return stream.destroyed || stream.destroying
}

function endIfOpen(stream) {
  if (!isClosed(stream) && !stream.writableEnded) stream.end()
}

// Pipes two duplex streams both ways the way npm p2p-socket does, plus half-close:
// - backpressure by pause/resume on 'drain' (works for net.Socket and streamx alike);
// - one side's 'end' (peer sent EOF) ends the other side's writable, so a request
//   that ends with a half-close still gets its response;
// - one side's 'close' ENDS the other side, never destroys it: destroy would throw
//   away data still queued for the peer, i.e. the tail of a transfer.
// Each stream closes on its own once both of its directions are done.
// `a` and `b` are { name, stream } so the log says which side did what.
function pipeBoth(id, a, b) {
  const oneWay = (from, to) => {
    // An error is followed by 'close', which ends the other side below.
    from.stream.on('error', (err) => log(`${id}: ${from.name} error ${errorCode(err)}: ${err.message}`))
    from.stream.on('data', (chunk) => {
      if (isClosed(to.stream)) return
      if (to.stream.write(chunk) === false) from.stream.pause()
    })
    to.stream.on('drain', () => from.stream.resume())
    from.stream.on('end', () => {
      log(`${id}: ${from.name} sent EOF, ending ${to.name}`)
      endIfOpen(to.stream)
    })
    from.stream.on('close', () => {
      log(`${id}: ${from.name} closed`)
      endIfOpen(to.stream)
      // `to` may be paused waiting for a 'drain' that will never come now; let it
      // read on (into the void) so it reaches its own end and closes too.
      to.stream.resume()
    })
  }
  oneWay(a, b)
  oneWay(b, a)
}

function errorCode(err) {
  return (err && err.code) || 'UNKNOWN'
}

module.exports = {
  log,
  emit,
  fail,
  parseCli,
  requireOpt,
  parseHex,
  parsePort,
  parseBootstrap,
  FREE_UDP_PORT,
  dhtOptions,
  onShutdown,
  pipeBoth,
  errorCode
}
