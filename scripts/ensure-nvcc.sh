#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain from PyPI into a cache folder, once, and prints
# the path of its `nvcc` on stdout (everything else goes to stderr).
#
#   NVCC="$(scripts/ensure-nvcc.sh)"
#
# The folder is ${VRAMSWAP_CUDA_TOOLCHAIN:-${XDG_CACHE_HOME:-$HOME/.cache}/vramswap/cuda-13.0.88}.
# A finished install leaves a stamp file; a second run finds it and returns at once. The versions
# are pinned together (see /work/shared/TOOLCHAIN.md): an unpinned nvidia-nvvm pulls a newer
# NVVM whose PTX ISA a CUDA 13.0 driver cannot load and ptxas 13.0 rejects. nvidia-cuda-cccl
# provides <nv/target>, without which <cuda_fp16.h> does not compile.
#
# Exit status: 0 with the path printed; 1 when the install failed (no network, no pip), with the
# reason on stderr. Callers decide whether that is fatal (scripts/test.sh: fatal when CI=true).
set -euo pipefail

PACKAGES=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
)
DIR="${VRAMSWAP_CUDA_TOOLCHAIN:-${XDG_CACHE_HOME:-$HOME/.cache}/vramswap/cuda-13.0.88}"
NVCC="$DIR/nvidia/cu13/bin/nvcc"
STAMP="$DIR/.vramswap-toolchain-complete"

if [ -x "$NVCC" ] && [ -f "$STAMP" ]; then
  echo "$NVCC"
  exit 0
fi

PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$PYTHON" ] || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "ensure-nvcc: ERROR: no python3 with pip found; cannot install nvcc from PyPI" >&2
  exit 1
fi

mkdir -p "$(dirname "$DIR")"
# One installer at a time: parallel CI jobs or worktrees share the cache folder.
exec 9>"$DIR.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -x "$NVCC" ] && [ -f "$STAMP" ]; then
  echo "$NVCC"
  exit 0
fi

# What is there is an interrupted install (or nothing): start over. Never delete a folder that
# does not look like ours (VRAMSWAP_CUDA_TOOLCHAIN pointing somewhere else by mistake).
if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -d "$DIR/nvidia" ]; then
  echo "ensure-nvcc: ERROR: $DIR exists and is not a toolchain folder; refusing to replace it" >&2
  exit 1
fi
rm -rf "$DIR"
echo "ensure-nvcc: installing ${PACKAGES[*]} into $DIR (about 270 MB, once)" >&2
if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$DIR" "${PACKAGES[@]}" >&2; then
  rm -rf "$DIR"
  echo "ensure-nvcc: ERROR: pip could not install the CUDA toolchain (no network or no PyPI?)" >&2
  exit 1
fi
if [ ! -x "$NVCC" ] || [ ! -x "$DIR/nvidia/cu13/bin/ptxas" ]; then
  echo "ensure-nvcc: ERROR: the install finished but $NVCC or ptxas is missing" >&2
  exit 1
fi
touch "$STAMP"
echo "$NVCC"
