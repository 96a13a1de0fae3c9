#!/usr/bin/env bash
# One-shot GPU verification (issue "GPU fused path" section 3): build the extension on the GPU machine,
# run the GPU tests, run the benchmark comparison (resnet50 train step and inference, bf16,
# channels_last: resnet_fast vs torchvision eager vs torch.compile(torchvision)), and write
#   gpu_check-DATE.log        everything printed
#   gpu-tests-DATE.xml        junit results of the GPU tests
#   gpu-DATE.json             pytest-benchmark JSON (device, versions, limits in machine_info)
#   gpu-DATE.md, gpu-DATE.png the table and plot (benchmarks/report.py); the table is printed last
#   conv_tuning.json          the per-shape conv choices measured on this GPU (commit it next to the
#                             results; RESNET_FAST_TUNING_CACHE=<it> replays them without measuring)
# to $OUT when set, else benchmarks/results/. Budget: 8 minutes on an H100 with start-up and
# compilation; every stage has its own timeout and a failing stage does not stop the later ones
# (the exit status says whether all passed).
set -uo pipefail
cd "$(dirname "$0")/.."

DEST="${OUT:-benchmarks/results}"
mkdir -p "$DEST"
STAMP="$(date -u +%Y-%m-%d)"
exec > >(tee "$DEST/gpu_check-$STAMP.log") 2>&1
export PYTHONUNBUFFERED=1
status=0
stage() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }

stage "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

stage "build (MAX_JOBS=16, this GPU's architecture only)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
ARCH="$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)"
RESNET_FAST_CUDA_ARCHS="$ARCH" MAX_JOBS=16 timeout 200 pip install --no-build-isolation --no-deps -e . -q \
  || { echo "BUILD FAILED: the native extension is skipped; Triton and reference paths still run"; status=1; }
python -c "import resnet_fast, json; print(json.dumps(resnet_fast.backend_info(), indent=1))" || status=1

# Conv choices: reuse the committed cache when present, record new ones next to the results.
export RESNET_FAST_TUNING_CACHE="$DEST/conv_tuning.json"
if [ -f benchmarks/results/conv_tuning.json ] && [ "$DEST" != benchmarks/results ]; then
  cp benchmarks/results/conv_tuning.json "$RESNET_FAST_TUNING_CACHE"
fi

stage "GPU tests: models on the Triton backend, autocast, Triton kernels, every op on every backend"
# Tests use each conv's default Triton configuration (no per-shape measuring): compile time stays bounded.
RESNET_FAST_CONV=triton timeout 210 python -m pytest -m gpu -q -p no:cacheprovider -rfE \
  --junitxml="$DEST/gpu-tests-$STAMP.xml" \
  tests/models/test_device_backends.py tests/models/test_autocast.py tests/ops/test_triton.py tests/ops \
  || { echo "GPU TESTS FAILED (or timed out)"; status=1; }

stage "benchmarks (RESNET_FAST_BENCH=quick: resnet50 batch 256 + op benchmarks)"
RESNET_FAST_BENCH=quick timeout 200 python -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$DEST/gpu-$STAMP.json" || { echo "BENCHMARKS FAILED (or timed out)"; status=1; }

stage "table"
if [ -f "$DEST/gpu-$STAMP.json" ]; then
  python benchmarks/report.py "$DEST/gpu-$STAMP.json" --markdown "$DEST/gpu-$STAMP.md" --plot "$DEST/gpu-$STAMP.png" \
    || status=1
  cat "$DEST/gpu-$STAMP.md"
fi
echo "gpu_check exit status: $status"
exit $status
