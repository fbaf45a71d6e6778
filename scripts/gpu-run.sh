#!/usr/bin/env bash
# Runs on the GPU machine from the bundle scripts/gpu-check.sh made. Needs no Rust toolchain.
#   bash run.sh [OUT_DIR]
# Every step runs even if an earlier one failed; the report says which failed, and the script
# exits non-zero if any did.
set -uo pipefail
# Steps run most-wanted first (device facts, the measurements, the PyTorch path, then the test
# suites and the demo), so a run cut short by a lease still reports what matters most.
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/out}"
# Size of the whole-model sets (MiB); 4 GiB by default, like a 2B-parameter f16 model.
SWAP_MB="${VRAMSWAP_GPU_CHECK_MB:-4096}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
VS="$HERE/vramswap"
STATUS="$OUT/steps.txt"
: > "$STATUS"
# Each step is stopped after VRAMSWAP_GPU_STEP_S seconds (default 150): a hang on a first GPU
# must not spend a lent machine's whole time; the report names the step as timed out.
STEP_S="${VRAMSWAP_GPU_STEP_S:-150}"
step() { # step NAME COMMAND...: runs it, logs to OUT/NAME.log, records pass/fail
  local name="$1"; shift
  echo "== $name ($(date -u +%H:%M:%S))" >&2
  local rc=0
  timeout --kill-after=10 "$STEP_S" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  case "$rc" in
    0) echo "$name pass" >> "$STATUS" ;;
    77) echo "$name skipped (see $name.log)" >> "$STATUS" ;; # the automake convention
    124|137) echo "$name FAIL(timed out after ${STEP_S} s)" >> "$STATUS" ;;
    *) echo "$name FAIL($rc)" >> "$STATUS" ;;
  esac
  tail -n 5 "$OUT/$name.log" >&2
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
step info "$VS" info --backend cuda --json
cp "$OUT/info.log" "$OUT/info.json" 2>/dev/null || true
step selftest sh -c "'$VS' selftest --backend cuda --json > '$OUT/selftest.json'"
step bench sh -c "'$VS' bench --backend cuda --json --svg '$OUT' > '$OUT/bench.json'"
# The allocator's three large-block modes on a serving trace: real reserved/allocated ratios and
# ops/s, with the page pool's cuMemMap/cuMemUnmap counts (their price is what the GPU adds).
step replay-compare sh -c "'$VS' replay --backend cuda --generate serving --seed 1 --compare --json > '$OUT/replay-compare.json'"
step swap-bench sh -c "'$VS' swap-bench --backend cuda --size-mb $SWAP_MB --json > '$OUT/swap-bench.json'"
step torch-baseline python3 "$HERE/scripts/torch_baseline.py" --size-mb "$SWAP_MB" --json "$OUT/torch.json"
if [ -f "$HERE/examples/torch_pluggable.py" ] && [ -f "$HERE/libvramswap.so" ]; then
  step torch-pluggable python3 "$HERE/examples/torch_pluggable.py" --lib "$HERE/libvramswap.so"
fi
# vramswap.torch.adopt on the machine's own torch and transformers: the wheel (stable ABI, any
# Python >= 3.9) into a folder of the output, no index needed; skipped (77) without torch or CUDA.
if ls "$HERE"/wheels/vramswap-*.whl > /dev/null 2>&1; then
  python3 -m pip install --quiet --no-deps --no-index --target "$OUT/pylib" "$HERE"/wheels/vramswap-*.whl \
    > "$OUT/wheel-install.log" 2>&1 || echo "wheel-install FAIL" >> "$STATUS"
fi
# The Python suites' GPU-only tests (test_torch.py, test_dlpack.py) on the machine's torch.
if ! python3 -c 'import pytest' > /dev/null 2>&1; then
  echo "pytest-gpu skipped (no pytest in $(command -v python3))" >> "$STATUS"
elif [ -d "$HERE/pytests" ]; then
  step pytest-gpu env PYTHONPATH="$OUT/pylib" VRAMSWAP_LIB="$HERE/libvramswap.so" \
    python3 -m pytest -q -rs -p no:cacheprovider "$HERE/pytests"
fi
# Its own limit (VRAMSWAP_GPU_ADOPT_S, default 360 s): a 16 GB model is saved, reloaded and
# moved to and from pageable memory several times (about 2 to 3 minutes by the H200's figures).
STEP_S="${VRAMSWAP_GPU_ADOPT_S:-360}" step torch-adopt env PYTHONPATH="$OUT/pylib" \
  VRAMSWAP_LIB="$HERE/libvramswap.so" \
  python3 "$HERE/scripts/gpu_torch_adopt.py" --sizes-gb "${VRAMSWAP_GPU_ADOPT_GB:-1,4,16}" \
  --json "$OUT/torch-adopt.json"
# The backend conformance suite and the backend-generic suites on the real driver.
for t in "$HERE"/tests/*; do
  # VRAMSWAP_EXE: capi_store starts the bundle's `vramswap store serve` (registering the
  # store's sealed shared memory with the real driver).
  step "test-$(basename "$t")" env VRAMSWAP_TEST_BACKEND=cuda VRAMSWAP_EXE="$HERE/vramswap" "$t" --test-threads=1
done
# The demo computes with candle on the device, so on `cuda` it needs candle's CUDA kernels
# (`--features cuda`, which links the CUDA libraries at build time); gpu-check.sh builds the
# portable binary without them and says so in FEATURES.
if grep -q '^candle-cuda: yes' "$HERE/FEATURES" 2>/dev/null; then
  step demo "$VS" demo --backend cuda
else
  echo "demo skipped (the bundle's binary is built without candle's CUDA kernels, --features cuda)" >> "$STATUS"
fi
python3 "$HERE/scripts/gpu_report.py" "$OUT" "$HERE" > "$OUT/gpu-results.md"
echo "report: $OUT/gpu-results.md" >&2
! grep -q FAIL "$STATUS"
