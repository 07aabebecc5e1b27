#!/usr/bin/env bash
# The crash-test harness at full strength: a real (scripted-model) search killed with SIGKILL
# at 50 random moments, resumed each time, then compared with an uninterrupted run; once one
# step at a time and once with eight steps in flight. CI runs the same tests with 6 kills.
# Prints the counts it checked.
set -euo pipefail
cd "$(dirname "$0")/.."
METAFORGE_KILLS="${METAFORGE_KILLS:-50}" cargo test --release --test search_loop kill_9 -- --nocapture
