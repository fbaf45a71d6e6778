#!/usr/bin/env bash
# Builds everything a GPU machine needs to verify and measure vramswap, into one folder small
# enough for the device tool to carry (64 MiB), and prints the one command to run there.
#
#   bash scripts/gpu-check.sh [BUNDLE_DIR]      # default: gpu-bundle (git-ignored)
#
# On the GPU machine (no Rust toolchain needed):
#   bash gpu-bundle/run.sh [OUT_DIR]            # writes OUT_DIR/gpu-results.md (+ raw JSON)
#
# run.sh runs: the backend conformance suite and the backend-generic test suites on `cuda`,
# `vramswap selftest`, `vramswap bench`, `vramswap swap-bench`, the demo on `cuda` where it was
# built, scripts/torch_baseline.py (PyTorch on the same GPU) and scripts/gpu_torch_adopt.py
# (vramswap.torch.adopt on the machine's torch, from the bundled wheel), then writes one Markdown report
# with every figure side by side. Commit it as docs/gpu-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${1:-gpu-bundle}"

# PTX for the kernels needs nvcc at build time.
if [ -z "${NVCC:-}" ]; then
  NVCC="$(scripts/ensure-nvcc.sh)"
  export NVCC
fi

echo "== building the release binary and the release test binaries (NVCC=$NVCC)" >&2
cargo build --release --workspace
SUITES=(conformance backend_parity swap_engine alloc_backends capi capi_engine capi_store)
ARGS=()
for s in "${SUITES[@]}"; do ARGS+=(--test "$s"); done
mapfile -t TESTS < <(cargo test --release -p vramswap "${ARGS[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["target"]["name"]+" "+m["executable"])')

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests" "$BUNDLE/scripts" "$BUNDLE/examples"
TD="${CARGO_TARGET_DIR:-target}"
cp "$TD/release/vramswap" "$BUNDLE/"
[ -f "$TD/release/libvramswap.so" ] && cp "$TD/release/libvramswap.so" "$BUNDLE/"
for t in "${TESTS[@]}"; do
  name="${t%% *}"; exe="${t#* }"
  cp "$exe" "$BUNDLE/tests/$name"
done
strip "$BUNDLE/vramswap" "$BUNDLE"/tests/* 2>/dev/null || true
[ -f "$BUNDLE/libvramswap.so" ] && strip --strip-debug "$BUNDLE/libvramswap.so" 2>/dev/null || true
cp scripts/torch_baseline.py scripts/gpu_report.py scripts/gpu_torch_adopt.py "$BUNDLE/scripts/"
# The Python package as a wheel (abi3: installs on the GPU machine's Python 3.12 with no index).
echo "== building the vramswap wheel (release)" >&2
mkdir -p "$BUNDLE/wheels"
CARGO_TARGET_DIR="$PWD/target/python" python3 -m pip wheel --quiet --no-deps -w "$BUNDLE/wheels" ./python
# The Python suites whose GPU-only tests run only there (they skip on CPU machines).
mkdir -p "$BUNDLE/pytests"
cp python/tests/conftest.py python/tests/test_torch.py python/tests/test_dlpack.py "$BUNDLE/pytests/"
[ -f examples/torch_pluggable.py ] && cp examples/torch_pluggable.py "$BUNDLE/examples/"
cp scripts/gpu-run.sh "$BUNDLE/run.sh"
git rev-parse --short HEAD > "$BUNDLE/COMMIT" 2>/dev/null || true
# The portable build: libcuda loaded at run time, candle computing on the CPU only.
echo "candle-cuda: no" > "$BUNDLE/FEATURES"

size=$(du -sm "$BUNDLE" | cut -f1)
echo "== bundle $BUNDLE: ${size} MiB" >&2
if [ "$size" -gt 60 ]; then
  echo "warning: the bundle is over 60 MiB; the device tool carries at most 64 MiB" >&2
fi
echo "run on the GPU machine (carry $BUNDLE):" >&2
echo "bash $BUNDLE/run.sh \"\${OUT:-gpu-out}\""
