#!/usr/bin/env bash
# The one test command: every face of vramswap, on a machine with no GPU.
#   1. the Rust tests on the `sim` backend (cargo test --workspace);
#   2. the same backend-generic suites on the `cuda` backend over the emulated driver;
# Later stages (C/C++ consumers, Python package) are added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (workspace, including the emulated CUDA driver)"
cargo build --workspace --all-targets

echo "== tests on the sim backend"
cargo test --workspace

EMU="$PWD/target/debug/libvramswap_cuda_emu.so"
if [ -f "$EMU" ] && nm -D --defined-only "$EMU" 2>/dev/null | grep -q ' cuInit$'; then
  echo "== tests on the cuda backend over the emulated driver ($EMU)"
  VRAMSWAP_TEST_BACKEND=cuda VRAMSWAP_CUDA_DRIVER="$EMU" cargo test -p vramswap --test conformance --test alloc_backends
fi
echo "== all test stages passed"
