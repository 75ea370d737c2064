#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and fails on the first crash or slow input.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, every target)
#
# The committed corpus (fuzz/corpus/<target>) seeds each run read-only; what libFuzzer finds
# goes to a scratch directory, so a run leaves the tree as it was. A crash is saved under
# fuzz/artifacts/<target>/ and reproduces with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true

# cargo-fuzz from crates.io, one pinned version (its lockfile too) so CI builds what we tried.
cargo_fuzz_version=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  cargo install --locked "cargo-fuzz@$cargo_fuzz_version"
fi

# libFuzzer's instrumentation needs nightly's -Z flags. Where no nightly toolchain is installed
# (and none can be fetched), the stable one accepts them with RUSTC_BOOTSTRAP=1.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  echo "fuzz/run.sh: no nightly toolchain; building the fuzz targets with stable and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

# No sanitizer: every decoder and the transport are safe Rust (`forbid(unsafe_code)` in udx),
# so AddressSanitizer would find nothing a panic does not, at twice the build time in CI.
# Debug assertions (-a) stay on: overflow checks are what catch a hostile length.
fuzz_flags=(-O -a -s none)
cargo "${toolchain[@]}" fuzz build "${fuzz_flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzz/run.sh: $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  # -timeout: one input taking seconds is a bug too (a hostile packet must be cheap).
  if ! cargo "${toolchain[@]}" fuzz run "${fuzz_flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz/run.sh: fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
done
echo "fuzz/run.sh: ${#targets[@]} targets ran ${seconds}s each without a crash"
