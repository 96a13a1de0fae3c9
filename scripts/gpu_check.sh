#!/usr/bin/env bash
# One-shot GPU verification (see the GPU issues): build the extension on the GPU machine, run the GPU
# tests, run the model benchmarks, and write results to $OUT (when set) or benchmarks/results/.
# Must finish within 8 minutes on an H100, start-up and compilation included.
#
# Status: a first version. It exercises what exists today (op tests on CUDA for the reference and
# native backends, the resnet50 benchmark); the GPU issue extends it with the Triton path,
# model-level GPU tests and torch.compile(torchvision) baselines.
set -uo pipefail
cd "$(dirname "$0")/.."

DEST="${OUT:-benchmarks/results}"
mkdir -p "$DEST"
STAMP="$(date -u +%Y-%m-%d)"
LOG="$DEST/gpu_check-$STAMP.log"
status=0
exec > >(tee "$LOG") 2>&1

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

echo "== build (MAX_JOBS=16)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
MAX_JOBS=16 timeout 240 pip install --no-build-isolation --no-deps -e . -q || { echo "BUILD FAILED"; exit 1; }
python -c "import resnet_fast, json; print(json.dumps(resnet_fast.backend_info(), indent=1))"

echo "== GPU op tests, both backends"
timeout 150 python -m pytest tests/ops -q -m gpu -x -p no:cacheprovider || status=1

echo "== native CUDA backend on a whole model (resnet50, float32 vs float64 on the GPU)"
RESNET_FAST_BACKEND=native timeout 60 python - <<'PY' || status=1
import copy, torch, torchvision, resnet_fast
torch.manual_seed(0)
tv = torchvision.models.resnet50(num_classes=10, zero_init_residual=True).cuda()
fast = resnet_fast.from_torchvision(copy.deepcopy(tv))
ref = copy.deepcopy(tv).double()
x = torch.randn(8, 3, 128, 128, device="cuda")
for m in (tv, fast, ref):
    m.train()
out = [m(x.double() if m is ref else x) for m in (tv, fast, ref)]
e_tv = (out[0].double() - out[2]).norm().item(); e_fast = (out[1].double() - out[2]).norm().item()
print(f"train forward L2 error: torchvision {e_tv:.3e}  resnet_fast {e_fast:.3e}")
assert e_fast <= 2 * e_tv + 1e-6 * out[2].norm().item(), "resnet_fast float32 error above 2x eager's"
PY

echo "== benchmarks"
(cd benchmarks && timeout 240 python -m pytest . --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="../$DEST/gpu-$STAMP.json") || status=1
python - "$DEST/gpu-$STAMP.json" <<'PY' || status=1
import json, sys
data = json.load(open(sys.argv[1]))
print("| benchmark | median ms | images/s | speedup vs torchvision |")
print("| --- | --- | --- | --- |")
for b in data["benchmarks"]:
    info = b["extra_info"]
    print(f"| {b['name']} | {b['stats']['median'] * 1e3:.1f} | {info.get('images_per_s', 0):.0f} | "
          f"{info.get('speedup_vs_torchvision', float('nan')):.2f} |")
PY
exit $status
