#!/usr/bin/env bash
# A metaforge binary for Ray nodes whose CPUs may differ from this machine's: built for a
# portable x86-64 level instead of this CPU (.cargo/config.toml's target-cpu=native), and
# without the embedded model, which shards never run (their model calls go back to the
# driver). Install it on the nodes and set `executor.node_binary` to its path there.
#   scripts/build-node-binary.sh [LEVEL]    LEVEL: x86-64 | x86-64-v2 (default) | x86-64-v3
set -euo pipefail
cd "$(dirname "$0")/.."
level="${1:-x86-64-v2}"
RUSTFLAGS="-C target-cpu=$level" cargo build --release --no-default-features --target-dir target/node
echo "built target/node/release/metaforge for $level; set executor.node_binary to where the nodes have it"
