#!/usr/bin/env bash
# Installs what building metaforge needs on a fresh Debian machine with Rust and Python 3:
# cmake and libclang (llama.cpp's build and bindgen), z3 (proofs of guard fallbacks), Java 17
# (the twc domain's games), and target/pyenv with the openai
# package for exported agents; with --with-browser also headless Chromium (report test).
# Idempotent; uses sudo when not root.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# libclang itself, not libclang-cpp (which some images ship alone and bindgen cannot use).
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
# Java 17 runs the episodic domain's games (TextWorldExpress; src/episodic/env.rs), whose
# package the binary installs into its own virtual environment on first use.
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
# z3 proves guard fallbacks (src/guard/verify.rs); without it they are labelled "tested".
command -v z3 >/dev/null 2>&1 || need+=(z3)
# --with-browser (the test command): headless Chromium for the HTML report test.
if [ "${1:-}" = "--with-browser" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Exported agents run outside metaforge with the `openai` package; the tests run them with
# this private Python (never the system's).
pyenv="$(dirname "$0")/../target/pyenv"
if ! "$pyenv/bin/python" -c "import openai" >/dev/null 2>&1; then
  echo "setup: creating target/pyenv with the openai package (PyPI)" >&2
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install -q --disable-pip-version-check "openai>=1,<4"
fi
