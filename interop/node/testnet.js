'use strict'

// A throwaway HyperDHT network on 127.0.0.1 for tests: one bootstrap node plus
// N-1 persistent nodes. Prints {"bootstrap":["127.0.0.1:PORT"]} once every node
// is fully bootstrapped.

const createTestnet = require('hyperdht/testnet')
const { log, emit, fail, parseCli, onShutdown, FREE_UDP_PORT } = require('./common')

const USAGE = 'node testnet.js [--nodes N]   (N >= 1, default 10)'

async function main() {
  const args = parseCli({ nodes: { type: 'string', default: '10' } }, USAGE)
  const nodes = Number(args.nodes)
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 100) fail(`--nodes must be 1..100, got ${args.nodes}\nusage: ${USAGE}`)

  let testnet = null
  onShutdown(() => testnet && testnet.destroy())

  // The helper's own loop would give every extra node hyperdht's fixed default
  // port; build only the bootstrap with it and add the others on free ports, with
  // the same options the helper uses for them.
  testnet = await createTestnet(1, { host: '127.0.0.1', port: FREE_UDP_PORT })
  while (testnet.nodes.length < nodes) {
    const node = testnet.createNode({ ephemeral: false, firewalled: false, port: FREE_UDP_PORT })
    await node.fullyBootstrapped()
  }

  const bootstrap = testnet.bootstrap.map(({ host, port }) => `${host}:${port}`)
  log(`${nodes} nodes up, bootstrap ${bootstrap.join(',')}`)
  emit({ bootstrap })
}

main().catch((err) => fail(err.stack || String(err)))
