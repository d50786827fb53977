#!/usr/bin/env bash
# bench/crypto/run.sh -- builds the C peer (peer.c) and runs bench/crypto/run.lua in the host, which
# measures nuvion.crypto from Lua and runs the peer before and after itself (same keys and messages).
# Environment: BENCH_CRYPTO_SCALE (iterations multiplier, default 1), BENCH_CRYPTO_ROUNDS (default 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p build/bench
PKG="openssl libsecp256k1"
# shellcheck disable=SC2046
cc -std=gnu11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags $PKG) -o build/bench/crypto_peer \
    bench/crypto/peer.c $(pkg-config --libs $PKG)
BENCH_CRYPTO_PEER=build/bench/crypto_peer exec bin/nuvion run bench/crypto/run.lua
