#!/usr/bin/env bash
# Downloads, here (PyPI reachable), the wheels the GPU window needs that the GPU machine (Python 3.12,
# manylinux x86_64, no network) lacks, into .gpu-wheels/ (git-ignored). The GPU run carries that
# folder and scripts/gpu_check.sh installs it with
#   python3 -m pip install --no-index --no-deps --target /tmp/gpu-site .gpu-wheels/*.whl
# and puts /tmp/gpu-site on PYTHONPATH. --no-deps: each wheel a stage imports is named below, one
# version each (two versions of one package stop the whole install):
#   nvidia-cudnn-frontend  cuDNN's graph API (module `cudnn`) for the cuDNN fused-graph engine and the
#                          device-properties file; imports without its cutlass-dsl / tvm-ffi
#                          requirements (those serve only its optional DSL kernels), and finds cuDNN
#                          itself in the machine's nvidia-cudnn-cu13
#   expecttest             torch.library.opcheck (the op tests) imports torch.testing._internal, which needs it
# The machine already has pytest, pytest-xdist, pytest-benchmark, pytest-timeout, matplotlib, onnx,
# onnxruntime and onnxscript.
#   scripts/fetch_gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.gpu-wheels}"
WHEELS=(nvidia-cudnn-frontend==1.32.0 expecttest==0.3.0)
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
