#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has no network), downloaded here for its Python 3.12 / x86_64, into
# ${1:-gpu_wheels}/ to be carried along with the work tree; install them there with
#   pip install --no-deps gpu_wheels/*.whl
# nvidia-cudnn-frontend only (11.6 MB): its Python graph API imports and runs without its declared
# nvidia-cutlass-dsl / apache-tvm-ffi dependencies (~0.6 GB, needed only by its CuTe-DSL kernels).
set -euo pipefail
DEST="${1:-gpu_wheels}"
mkdir -p "$DEST"
pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "nvidia-cudnn-frontend>=1.32" expecttest
ls -la "$DEST"
