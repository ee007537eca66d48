#!/usr/bin/env bash
# Runs on a GPU machine (CUDA 13 driver, PyTorch with cuDNN 9 in python3), from the repository
# root, with .gpu/xtask.xz built by xtask/gpu-build.sh: every CUDA op against the CPU kernels,
# a model's training steps on both devices, then `bench train` beside PyTorch. Writes
# gpu-check.md and gpu-check.json to $OUT (else ./gpu-check), then `bench epoch` on the GRID-800
# cache when it was carried (bench-epoch.log). Extra arguments go to gpu-check, e.g.
# `--steps 10 --warmup 3` or `--no-bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT" /tmp/mmbal-gpu
xz -dc .gpu/xtask.xz > /tmp/mmbal-gpu/xtask && chmod +x /tmp/mmbal-gpu/xtask
# candle links the CUDA runtime libraries; cuDNN comes from PyTorch's own environment (a system
# copy may be older than the one PyTorch was built against, which PyTorch then refuses).
PYPREFIX=$(python3 -c 'import sys; print(sys.prefix)')
CUDNN_DIR=$(dirname "$(find "$PYPREFIX" -name 'libcudnn.so.9*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${CUDNN_DIR}:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv
python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'
echo "cudnn from ${CUDNN_DIR}"
/tmp/mmbal-gpu/xtask gpu-check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"
rc=${PIPESTATUS[0]}
# One real-data epoch (GRID-800 with noisy audio, from its packed cache) against the same steps
# on a batch in memory, when the cache was carried along (`carry: runs/grid800noisy-inputs.mmbc`;
# 45 MB, the dataset itself stays behind, so its sources are not checked). The config names the
# word alignments under ${MMBAL_SHARED_DATA}, which must be set; nothing is read there.
CACHE=runs/grid800noisy-inputs.mmbc
if [ -f "$CACHE" ]; then
  for p in fp32 bf16; do
    MMBAL_SHARED_DATA=${MMBAL_SHARED_DATA:-/nonexistent} /tmp/mmbal-gpu/xtask bench epoch \
      --config configs/grid-800-noisy.toml --device cuda:0 --unchecked-cache-sources \
      --precision "$p" 2>&1 | tee -a "$OUT/bench-epoch.log" || rc=1
  done
else
  echo "bench epoch not run: $CACHE was not carried" | tee "$OUT/bench-epoch.log"
fi
exit "$rc"
