#!/usr/bin/env bash
# The test command (README, .ci/run): setup, then every test in release mode, so the tests
# and the quickstart share one build of llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-browser
cargo test --release --locked
# The benchmarks are not run here, but they must build: a change to a library type breaks
# them where no test would notice.
cargo bench --locked --no-run
