#!/usr/bin/env bash
# Runs on a GPU machine (CUDA 13 driver, PyTorch with cuDNN 9 in python3), from the repository
# root, with .gpu/xtask.xz built by xtask/gpu-build.sh: every CUDA op against the CPU kernels,
# a model's training steps on both devices, then `bench train` beside PyTorch. Writes
# gpu-check.md and gpu-check.json to $OUT (else ./gpu-check). Extra arguments go to gpu-check,
# e.g. `--steps 10 --warmup 3` or `--no-bench`.
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
exit "${PIPESTATUS[0]}"
