#!/usr/bin/env bash
# Builds the CUDA xtask here (no GPU or toolkit needed: ../shared/cuda/setup-build.sh prepares
# nvcc and link-time stubs of the CUDA driver and cuDNN) and packs it for a GPU machine:
#   bash xtask/gpu-build.sh            # writes .gpu/xtask.xz (the folder is git-ignored)
# then, on the GPU machine, in the repository root:
#   bash xtask/gpu-check.sh            # op checks + bench against PyTorch, report in $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source "${MMBAL_CUDA_PREFIX:-$HOME/.cache/mmbal-cuda}/env.sh"
# cudarc links libcudnn.so.9 (mmbal-ops calls cuDNN); here a stub of every cudnn* entry point
# cudarc declares satisfies the linker, and the GPU machine's real library is loaded at run time.
LINK="${MMBAL_CUDA_PREFIX:-$HOME/.cache/mmbal-cuda}/link"
if [ ! -f "$LINK/libcudnn.so" ]; then
  cargo fetch
  SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src/cudnn/sys/mod.rs | tail -1)
  grep -ohP '^pub unsafe fn (cudnn[A-Za-z0-9_]+)\(' "$SYS" | sed -E 's/^pub unsafe fn (cudnn[A-Za-z0-9_]+)\(/\1/' \
    | sort -u | awk '{print "int " $1 "(void){return 999;}"}' > "$LINK/cudnn_stub.c"
  gcc -shared -fPIC -o "$LINK/libcudnn.so" -Wl,-soname,libcudnn.so.9 "$LINK/cudnn_stub.c"
fi
CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p xtask
mkdir -p .gpu
xz -T2 -6 -c target-cuda/release/xtask > .gpu/xtask.xz
ls -l .gpu/xtask.xz
