#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (tests/fuzz.rs), on the stable
# toolchain: the package is built with SanitizerCoverage's inline 8-bit counters
# (`-C passes=sancov-module`) into target/fuzz-build, and TOTAL seconds are shared equally
# by the targets. Prints executions per target; a crash or hang fails the run and leaves
# the input under target/fuzz/crashes or target/fuzz/hangs. Inputs that reached new code are
# kept under target/fuzz/corpus (copy the useful ones to tests/fuzz/corpus).
#   scripts/fuzz.sh [TOTAL_SECONDS]     (default 3600)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-3600}"
targets=$(grep -c '^fn fuzz_' tests/fuzz.rs)
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation off build scripts and proc macros; the embedded model
# is left out (no target parses with it).
RUSTFLAGS="--cfg metaforge_fuzz -C target-cpu=native -C passes=sancov-module \
  -C llvm-args=-sanitizer-coverage-level=3 -C llvm-args=-sanitizer-coverage-inline-8bit-counters" \
METAFORGE_FUZZ_SECONDS=$(( total / targets )) \
  cargo test --release --no-default-features --target "$host" --target-dir target/fuzz-build \
  --test fuzz -- --nocapture --test-threads 1
