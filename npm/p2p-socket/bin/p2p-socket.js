#!/usr/bin/env node
'use strict';
// `npx p2p-socket ...`: runs the native p2p-socket binary that npm installed for this platform
// (the optional dependency @p2p-socket/<platform>-<arch>; npm picks it by its `os` and `cpu`)
// with the same arguments, and ends the way the binary ended: same exit code, or the same
// signal. Nothing is downloaded, here or at install time.

const { spawn } = require('node:child_process');
const { constants } = require('node:os');
const path = require('node:path');

// One entry per platform package in npm/@p2p-socket; keep the two in step.
const PACKAGES = {
  'darwin-arm64': '@p2p-socket/darwin-arm64',
  'darwin-x64': '@p2p-socket/darwin-x64',
  'linux-arm64': '@p2p-socket/linux-arm64',
  'linux-x64': '@p2p-socket/linux-x64',
  'win32-x64': '@p2p-socket/win32-x64',
};

function fail(message) {
  process.stderr.write(`p2p-socket: ${message}\n`);
  process.exit(1);
}

function isMusl() {
  if (process.platform !== 'linux') return false;
  const report = process.report && process.report.getReport();
  return Boolean(report && report.header && !report.header.glibcVersionRuntime);
}

function findBinary() {
  // A binary built by hand (`cargo build --release`) for a platform we ship none for.
  if (process.env.P2P_SOCKET_BINARY) return process.env.P2P_SOCKET_BINARY;

  const platform = `${process.platform}-${process.arch}`;
  const fromSource =
    'Build it from source instead (https://github.com/AndersCan/p2p-socket#install) and run ' +
    'that binary, or point P2P_SOCKET_BINARY at it.';
  const pkg = PACKAGES[platform];
  if (!pkg) {
    fail(`there is no prebuilt binary for ${platform} (there is for ${Object.keys(PACKAGES).join(', ')}). ${fromSource}`);
  }
  if (isMusl()) {
    fail(`the prebuilt ${platform} binary needs glibc, and this system uses musl. ${fromSource}`);
  }
  let dir;
  try {
    dir = path.dirname(require.resolve(`${pkg}/package.json`));
  } catch {
    fail(
      `the package ${pkg}, which holds the binary for this platform, is not installed. ` +
        'It is an optional dependency: reinstall without --no-optional / --omit=optional, and ' +
        'if a lockfile was made on another platform, run `npm install` here again.',
    );
  }
  return path.join(dir, 'bin', process.platform === 'win32' ? 'p2p-socket.exe' : 'p2p-socket');
}

const binary = findBinary();
const child = spawn(binary, process.argv.slice(2), { stdio: 'inherit' });

// Pass on what is sent to this process alone (`kill PID`, a supervisor stopping us) so the
// binary can withdraw its announcement and close cleanly; this process stays until it has. A
// terminal's Ctrl-C reaches both processes: the binary treats a second one like the first.
const FORWARDED = process.platform === 'win32' ? [] : ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
for (const signal of FORWARDED) {
  process.on(signal, () => child.kill(signal));
}
if (process.platform === 'win32') {
  // Windows gives Ctrl-C to every process on the console: the binary handles its own.
  process.on('SIGINT', () => {});
}

child.on('error', (err) => {
  fail(`cannot run ${binary}: ${err.message}. Reinstall p2p-socket, or build it from source.`);
});

child.on('exit', (code, signal) => {
  if (signal) {
    // Die of the same signal, so a shell or supervisor sees what happened to the binary.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
    // A signal this process cannot die of (ignored by its parent): the shell's convention.
    setTimeout(() => process.exit(128 + (constants.signals[signal] || 0)), 1000);
    return;
  }
  process.exit(code);
});
