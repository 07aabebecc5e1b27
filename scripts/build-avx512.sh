#!/usr/bin/env bash
# The embedded model's AVX-512 build, beside the portable one. The default build runs the
# model's kernels at the AVX2 level on every x86-64 CPU; this builds metaforge again with
# ggml's AVX-512 and AVX-512 VNNI kernels (Intel since Cascade Lake, AMD since Zen 4) into
# target/avx512 and puts it beside the default binary as target/release/metaforge-avx512.
# The model process then runs from it wherever the CPU has what it needs, and from the
# portable build elsewhere (llm::supervisor::model_binary; `metaforge doctor` says which).
# It builds llama.cpp a second time (some minutes on 2 cores); benches/RESULTS.md has what
# it buys.
#   scripts/build-avx512.sh
set -euo pipefail
cd "$(dirname "$0")/.."
GGML_AVX512=ON GGML_AVX512_VNNI=ON GGML_AVX512_VBMI=OFF GGML_AVX512_BF16=OFF GGML_AVX_VNNI=OFF \
  cargo build --release --locked --bin metaforge --target-dir target/avx512
mkdir -p target/release
cp target/avx512/release/metaforge target/release/metaforge-avx512
echo "built target/release/metaforge-avx512; the model process runs from it where the CPU has AVX-512 and VNNI"
