#!/usr/bin/env bash
# The soak test at full length: a 300-step search whose models sit behind a faulty
# OpenAI-compatible endpoint (faults on 20% of calls), killed with SIGKILL every 30 steps and
# resumed, then compared with the same search against a healthy endpoint. CI runs the same
# test on a short search. Prints the steps, kills and faults it went through.
set -euo pipefail
cd "$(dirname "$0")/.."
METAFORGE_SOAK_GENERATIONS="${METAFORGE_SOAK_GENERATIONS:-99}" \
METAFORGE_SOAK_KILL_EVERY="${METAFORGE_SOAK_KILL_EVERY:-30}" \
  cargo test --release --test soak -- --nocapture
