'use strict'

// Prints {"publicKey":hex,"secretKey":hex} of DHT.keyPair(seed), where the seed is
// either 32 raw bytes (--seed HEX64) or derived from a string the way npm
// p2p-socket does (--seed-string S): the string's UTF-8 bytes repeated to fill 32
// bytes, anything past byte 32 ignored.

const DHT = require('hyperdht')
const { emit, fail, parseCli, parseHex } = require('./common')

const USAGE = 'node keypair.js --seed-string S | --seed HEX64'

const args = parseCli({ 'seed-string': { type: 'string' }, seed: { type: 'string' } }, USAGE)
const given = ['seed-string', 'seed'].filter((name) => args[name] !== undefined)
if (given.length !== 1) fail(`give exactly one of --seed-string or --seed\nusage: ${USAGE}`)

let seed
if (args.seed !== undefined) {
  seed = parseHex(args.seed, 32, 'seed')
} else {
  // npm p2p-socket turns an empty string into a random key pair; a fixture must be
  // deterministic, so refuse instead of silently differing.
  if (args['seed-string'] === '') fail('--seed-string must not be empty (npm p2p-socket would pick a random key pair)')
  seed = Buffer.alloc(32).fill(args['seed-string'])
}

const keyPair = DHT.keyPair(seed)
emit({ publicKey: keyPair.publicKey.toString('hex'), secretKey: keyPair.secretKey.toString('hex') })
