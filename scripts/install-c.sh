#!/usr/bin/env bash
# Installs vramswap for C and C++ programs under PREFIX:
#   PREFIX/lib/libvramswap.a, PREFIX/lib/libvramswap.so   (release build)
#   PREFIX/include/vramswap.h                              (the committed, generated header)
#   PREFIX/lib/pkgconfig/vramswap.pc                       (pkg-config)
#
#   scripts/install-c.sh PREFIX
#
# VRAMSWAP_PROFILE=debug installs the debug build instead (what scripts/test.sh checks, to spare
# a release build). Then, for example:
#   export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
#   cc -std=c99 app.c $(pkg-config --cflags --libs vramswap) -Wl,-rpath,PREFIX/lib   # shared
#   cc -std=c99 app.c $(pkg-config --cflags vramswap) PREFIX/lib/libvramswap.a \
#      $(pkg-config --libs-only-l --static vramswap | sed 's/-lvramswap//')           # static
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$1"
PREFIX="$(cd "$1" && pwd)"
PROFILE="${VRAMSWAP_PROFILE:-release}"
# The C ABI needs the engine and the allocator only: no command-line tool (`cli`: clap,
# indicatif, bench, selftest, charts) and no candle layer (`infer`) in the C library.
FEATURES=(--no-default-features --features dynamic-loading)
case "$PROFILE" in
  release) cargo build -p vramswap --lib --release "${FEATURES[@]}"; DIR=release ;;
  debug) cargo build -p vramswap --lib "${FEATURES[@]}"; DIR=debug ;;
  *) echo "VRAMSWAP_PROFILE=$PROFILE: expected release or debug" >&2; exit 2 ;;
esac
BUILT="${CARGO_TARGET_DIR:-target}/$DIR"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)"

install -d "$PREFIX/lib/pkgconfig" "$PREFIX/include"
install -m 0644 "$BUILT/libvramswap.a" "$PREFIX/lib/libvramswap.a"
install -m 0755 "$BUILT/libvramswap.so" "$PREFIX/lib/libvramswap.so"
install -m 0644 ffi/include/vramswap.h "$PREFIX/include/vramswap.h"
cat > "$PREFIX/lib/pkgconfig/vramswap.pc" <<PC
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: vramswap
Description: Caching CUDA device allocator and swap engine for model weights (C ABI)
Version: $VERSION
Cflags: -I\${includedir}
Libs: -L\${libdir} -lvramswap
Libs.private: -lpthread -ldl -lm
PC
echo "installed vramswap $VERSION ($PROFILE) under $PREFIX"
echo "  PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --cflags --libs vramswap"
