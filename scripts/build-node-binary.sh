#!/usr/bin/env bash
# A metaforge binary to install on Ray nodes (or any machine) as `executor.node_binary`. The
# project's build is portable already (.cargo/config.toml: x86-64's baseline for its own
# code, the AVX2 level for the embedded model's kernels); this builds it into target/node,
# with the embedded model, or with --no-model without it, for nodes whose CPUs lack AVX2
# (shards never run the model: their calls go back to the driver).
#   scripts/build-node-binary.sh [--no-model]
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[ "${1:-}" = "--no-model" ] && features=(--no-default-features)
cargo build --release --locked "${features[@]}" --target-dir target/node
echo "built target/node/release/metaforge; install it on the nodes and set executor.node_binary to its path there"
