#!/usr/bin/env bash
# Builds the npm packages: `p2p-socket` (the launcher) and `@p2p-socket/<platform>` (the binary)
# as tarballs ready for `npm publish` or `npm install ./file.tgz`.
#
#   npm/build.sh [--binary PATH] [--platform NAME] [--out DIR]
#
# --binary    a p2p-socket binary built already (default: `cargo build --release` of this tree,
#             for this machine)
# --platform  the npm platform that binary is for, as in npm/@p2p-socket/NAME (default: this
#             machine's, e.g. linux-x64); a binary built elsewhere is packed the same way
# --out       where the tarballs go (default: npm/dist)
#
# Prints the paths of the two tarballs. The packages are assembled in a temporary copy, so the
# binary never lands in the source tree.
set -euo pipefail

npm_dir="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$npm_dir")"
binary=""
platform=""
out="$npm_dir/dist"

die() {
  echo "npm/build.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --platform) platform="${2:?--platform needs a name such as linux-x64}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v node >/dev/null 2>&1 || die "node is not installed; it is needed to pack npm packages (Node 18 or later)"
command -v npm >/dev/null 2>&1 || die "npm is not installed; it comes with Node.js 18 or later"

host="$(node -p 'process.platform + "-" + process.arch')"
platform="${platform:-$host}"
pkg_dir="$npm_dir/@p2p-socket/$platform"
[ -d "$pkg_dir" ] || die "no package for platform '$platform': npm/@p2p-socket has $(ls "$npm_dir/@p2p-socket" | tr '\n' ' ')"
exe="p2p-socket"
case "$platform" in win32-*) exe="p2p-socket.exe" ;; esac

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)"
[ -n "$version" ] || die "cannot read the version from $root/Cargo.toml ([workspace.package] version)"

# The launcher pins its platform packages by exact version: every version must be Cargo's.
node - "$version" "$npm_dir" <<'JS' || die "npm package versions differ from Cargo's; make them all the same"
const [version, dir] = process.argv.slice(2);
const fs = require('node:fs');
const path = require('node:path');
const read = (p) => JSON.parse(fs.readFileSync(path.join(dir, p), 'utf8'));
const main = read('p2p-socket/package.json');
const wrong = [];
if (main.version !== version) wrong.push(`p2p-socket is ${main.version}`);
for (const [name, wanted] of Object.entries(main.optionalDependencies)) {
  if (wanted !== version) wrong.push(`p2p-socket wants ${name}@${wanted}`);
  const pkg = read(`${name}/package.json`);
  if (pkg.version !== version) wrong.push(`${name} is ${pkg.version}`);
}
if (wrong.length) {
  console.error(`Cargo.toml says ${version}, but ${wrong.join('; ')}`);
  process.exit(1);
}
JS

if [ -z "$binary" ]; then
  [ "$platform" = "$host" ] || die "--platform $platform is not this machine ($host): pass the binary built for it with --binary"
  (cd "$root" && cargo build --release --locked --bin p2p-socket) >&2
  binary="${CARGO_TARGET_DIR:-$root/target}/release/p2p-socket"
fi
[ -f "$binary" ] || die "no binary at $binary"
if [ "$platform" = "$host" ]; then
  said="$("$binary" --version)" || die "$binary --version failed"
  [ "$said" = "p2p-socket $version" ] || die "$binary says '$said', but the packages are $version: rebuild it"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -R "$npm_dir/p2p-socket" "$stage/launcher"
cp -R "$pkg_dir" "$stage/platform"
mkdir -p "$stage/platform/bin"
cp "$binary" "$stage/platform/bin/$exe"
chmod 755 "$stage/platform/bin/$exe" "$stage/launcher/bin/p2p-socket.js"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
for pkg in launcher platform; do
  tarball="$(cd "$stage/$pkg" && npm pack --silent --pack-destination "$out")"
  echo "$out/$tarball"
done
