#!/usr/bin/env bash
# One GPU window (H100/H200, no network), one command, at most 8 minutes after start-up: every stage
# has its own budget inside a global deadline, runs under `timeout -s INT -k 30` (SIGINT: pytest still
# writes its junit XML, pytest-benchmark its JSON, the tables print), and a failing or timed-out stage
# never stops the later ones. Stages, most valuable first:
#   env      versions, nvidia-smi, device facts (device.json); carried wheels installed (.gpu-wheels/)
#   build    (background, from the start) the native extension for this GPU's arch only, MAX_JOBS=16,
#            into a build folder: nothing imports it until the native stage
#   precompile (background, after env) scripts/gpu_plan.py --precompile: the Triton specializations
#            the smoke / test / bench stages will launch, compiled in 12 processes into Triton's cache,
#            stage by stage, so those stages load kernels instead of compiling them serially
#   smoke    scripts/gpu_smoke.py: one resnet50 step + eval per engine (triton, aten) vs torchvision
#   tests    pytest tests/ -m gpu (CUDA instances only), pytest-xdist workers when importable, TF32 off
#            (scripts/gpu_tf32_off.py), the native CUDA C++ kernels deselected
#   probe    scripts/gpu_probe.py --out DIR --budget S, when that script exists: per resnet50 unit, dtype and
#            direction every engine timed and checked against aten; its probe/dispatch_table-<device>.json is
#            the per-shape dispatch table to commit as resnet_fast/backends/tables/<device>.json
#   bench    RESNET_FAST_BENCH=quick benchmarks with a fixed conv engine (RESNET_FAST_CONV=aten, or
#            auto over the committed table benchmarks/results/conv_tuning.json): nothing autotunes
#   compile  the torch.compile(torchvision) baselines (and the eager baseline they divide)
#   native   RESNET_FAST_BACKEND=native in its own processes, last: op tests, smoke, then the native op
#            benchmarks in what is left of its budget
# then the table and one verdict line per stage. Results: with $OUT set (the device tool brings back
# at most 8 files), $OUT/gpu_check.log, $OUT/verdicts.txt and $OUT/gpu_check-results.tar.gz (every
# stage's files, repacked after each stage); without it, benchmarks/results/gpu-DATE/.
#   scripts/gpu_check.sh              the GPU run
#   scripts/gpu_check.sh --dry-run    on a CPU: bash -n, each stage walked in a tiny form, then
#                                     scripts/gpu_plan.py (sm_90 compiles, counts, estimates vs budget)
#   scripts/gpu_check.sh --print-plan "stage budget_seconds" per line, window order; background jobs
#                                     starred (read by scripts/gpu_plan.py)
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"

# ---- the plan: budgets in seconds (sum <= 450: the last stage's 30 s kill grace stays inside 480).
# The probe (a later addition) gets 80 s; without it, its time goes to the tests and benchmarks.
PROBE_BUDGET=80
[ -f scripts/gpu_probe.py ] || PROBE_BUDGET=0
B_ENV=15; B_SMOKE=45; B_TESTS=$((125 + (80 - PROBE_BUDGET) / 2)); B_BENCH=$((60 + (80 - PROBE_BUDGET) / 2))
B_COMPILE=80; B_NATIVE=45
B_BUILD=240; B_PRECOMPILE=150  # background jobs, overlapping smoke / tests / probe / bench
TOTAL=480
plan() {
  echo "env $B_ENV"; echo "smoke $B_SMOKE"; echo "tests $B_TESTS"
  [ "$PROBE_BUDGET" -gt 0 ] && echo "probe $PROBE_BUDGET"
  echo "bench $B_BENCH"; echo "compile $B_COMPILE"; echo "native $B_NATIVE"
  echo "precompile* $B_PRECOMPILE"; echo "build* $B_BUILD"  # *: background, not in the sum
}
if [ "$MODE" = "--print-plan" ]; then plan; exit 0; fi
if [ "$MODE" = "--dry-run" ]; then
  bash -n "$0" || exit 1
  DRY=1
else
  DRY=0
fi

STAMP="$(date -u +%Y-%m-%d-%H%M)"
if [ -n "${OUT:-}" ]; then RES=/tmp/gpu_check-$STAMP; LOG="$OUT/gpu_check.log"
else RES=benchmarks/results/gpu-$STAMP; LOG="$RES/gpu_check.log"; fi
[ "$DRY" = 1 ] && { RES=$(mktemp -d /tmp/gpu_check-dry.XXXX); LOG="$RES/gpu_check.log"; TOTAL=1800; }
mkdir -p "$RES"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s); DEADLINE=$((START + TOTAL - 30))
VERDICTS="$RES/verdicts.txt"; : > "$VERDICTS"

pack() {  # everything so far, in case the window ends before the next stage does
  [ -n "${OUT:-}" ] && [ "$DRY" = 0 ] || return 0
  cp "$VERDICTS" "$OUT/verdicts.txt"
  tar czf "$OUT/.results.tmp" -C "$RES" . && mv "$OUT/.results.tmp" "$OUT/gpu_check-results.tar.gz"
}
verdict() { printf '%-8s %-8s %s\n' "$1" "$2" "$3" >> "$VERDICTS"; pack; }

# stage NAME BUDGET COMMAND...: runs COMMAND under a SIGINT timeout (budget, or what the deadline leaves).
stage() {
  local name=$1 budget=$2; shift 2
  local now left t t0 rc word
  [ "$DRY" = 1 ] && budget=300  # the dry run walks each stage tiny on a CPU: the window's budgets are gpu_plan's check
  now=$(date +%s); left=$((DEADLINE - now)); t=$((budget < left ? budget : left))
  if [ "$t" -lt 5 ]; then verdict "$name" SKIP "no time left in the window"; return 0; fi
  echo; echo "== $name (budget ${budget}s, limit ${t}s, at +$((now - START))s)"
  t0=$(date +%s)
  timeout -s INT -k 30 "$t" "$@"; rc=$?
  case $rc in 0) word=PASS;; 124) word=TIMEOUT;; 137) word=KILLED;; *) word=FAIL;; esac
  verdict "$name" "$word" "$(($(date +%s) - t0))s of ${budget}s (rc $rc)$(summary "$name")"
}
summary() {  # a junit / JSON summary for the verdict line, where the stage wrote one
  local f
  for f in "$RES/$1.xml" "$RES/$1-tests.xml"; do
    [ -f "$f" ] && python3 - "$f" <<'PY' 2>/dev/null
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot(); s = r if r.tag == "testsuite" else r[0]
print(f"; tests {s.get('tests')} failures {s.get('failures')} errors {s.get('errors')} "
      f"skipped {s.get('skipped')}", end="")
PY
  done
}

# ---- env (and wheels)
if [ "$DRY" = 1 ]; then ls .gpu-wheels 2>/dev/null | sed 's/^/carried wheel (Python 3.12, not installed here): /'
elif compgen -G ".gpu-wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
    .gpu-wheels/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/gpu-site" || echo "WHEEL INSTALL FAILED"
fi
stage env "$B_ENV" python3 - "$RES/device.json" <<'PY'
import json, subprocess, sys
import torch, triton
facts = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
         "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    facts.update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                 memory=p.total_memory, l2=getattr(p, "L2_cache_size", None))
    facts["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm",
                                          "--format=csv"], capture_output=True, text=True).stdout
    try:
        import cudnn  # nvidia-cudnn-frontend, from the carried wheels
        facts["cudnn_device_properties"] = cudnn.create_device_properties(0).serialize()
    except Exception as e:  # noqa: BLE001
        facts["cudnn_device_properties"] = f"unavailable: {e}"
print(json.dumps({k: v for k, v in facts.items() if k != "cudnn_device_properties"}, indent=1))
json.dump(facts, open(sys.argv[1], "w"), indent=1, default=str)
PY

# ---- build, in the background (only the native stage imports it)
ARCH="$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)"
BUILD=/tmp/gpu_check-build
if [ "$DRY" = 0 ]; then
  ( CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" RESNET_FAST_CUDA_ARCHS="$ARCH" MAX_JOBS=16 \
    timeout -s INT -k 30 "$B_BUILD" python3 setup.py -q build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp" \
    > "$RES/build.log" 2>&1; echo $? > "$RES/build.rc" ) &
  BUILD_PID=$!
fi

# ---- precompile, in the background (a failure only costs the compile time it would have saved)
if [ "$DRY" = 0 ]; then
  ( timeout -s INT -k 30 "$B_PRECOMPILE" python3 scripts/gpu_plan.py --precompile --workers 12 \
    > "$RES/precompile.log" 2>&1; echo $? > "$RES/precompile.rc" ) &
  PRECOMPILE_PID=$!
fi

# ---- smoke, tests, probe
if [ "$DRY" = 1 ]; then
  stage smoke "$B_SMOKE" python3 scripts/gpu_smoke.py --tiny --json "$RES/smoke.json"
  stage tests "$B_TESTS" python3 scripts/gpu_select.py
else
  stage smoke "$B_SMOKE" python3 scripts/gpu_smoke.py --engines triton,aten --json "$RES/smoke.json"
  XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
  stage tests "$B_TESTS" python3 -m pytest tests/ -m gpu -k "not native" $XDIST -p gpu_tf32_off -p no:cacheprovider \
    -q -rfE --junitxml="$RES/tests.xml"
fi
if [ "$PROBE_BUDGET" -gt 0 ]; then
  mkdir -p "$RES/probe"
  if [ "$DRY" = 1 ]; then stage probe "$PROBE_BUDGET" python3 scripts/gpu_probe.py --out "$RES/probe" --dry-run
  else stage probe "$PROBE_BUDGET" python3 scripts/gpu_probe.py --out "$RES/probe" --budget "$PROBE_BUDGET"; fi
fi

# ---- bench, compile: a fixed engine or the committed table, never tuning from scratch
if [ -f benchmarks/results/conv_tuning.json ]; then
  cp benchmarks/results/conv_tuning.json "$RES/conv_tuning.json"; CONV=auto
else CONV=aten; fi
export RESNET_FAST_TUNING_CACHE="$RES/conv_tuning.json"
BENCH=(python3 -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider)
[ "$DRY" = 1 ] && BENCH=(python3 -m pytest benchmarks/ --collect-only -qq -p no:cacheprovider)
RESNET_FAST_BENCH=quick RESNET_FAST_CONV=$CONV stage bench "$B_BENCH" "${BENCH[@]}" -k "not compile and not native" \
  --benchmark-json="$RES/bench.json"
RESNET_FAST_BENCH=quick stage compile "$B_COMPILE" "${BENCH[@]}" -k "compile or torchvision" \
  --benchmark-json="$RES/compile.json"

# ---- native CUDA C++ kernels, last, in their own processes
if [ "$DRY" = 1 ]; then
  RESNET_FAST_BACKEND=native stage native "$B_NATIVE" python3 -m pytest tests/ -m gpu -k native --collect-only -qq
else
  echo "waiting for the build"; wait "$BUILD_PID"; cat "$RES/build.log" | tail -5
  if [ "$(cat "$RES/build.rc" 2>/dev/null)" = 0 ] && cp "$BUILD"/lib/resnet_fast/_C*.so resnet_fast/; then
    RESNET_FAST_BACKEND=native stage native "$B_NATIVE" bash -c "python3 -m pytest tests/ -m gpu -k native \
      -p gpu_tf32_off -p no:cacheprovider -q -rfE --junitxml=$RES/native-tests.xml; a=\$?; \
      python3 scripts/gpu_smoke.py --engines native --json $RES/native-smoke.json; b=\$?; \
      RESNET_FAST_BENCH=quick python3 -m pytest benchmarks/ --benchmark-only -k native -q -p no:cacheprovider \
      --benchmark-json=$RES/native-bench.json; exit \$((a | b | \$?))"
  else verdict native FAIL "build failed (rc $(cat "$RES/build.rc" 2>/dev/null)): see build.log"; fi
fi

# ---- the background jobs' verdicts, the table, the plan check, the verdicts
if [ "$DRY" = 0 ]; then
  wait "$PRECOMPILE_PID"; tail -3 "$RES/precompile.log"
  rc=$(cat "$RES/precompile.rc" 2>/dev/null); verdict precompile "$([ "$rc" = 0 ] && echo PASS || echo FAIL)" \
    "background, rc $rc: $(tail -1 "$RES/precompile.log")"
  rc=$(cat "$RES/build.rc" 2>/dev/null); verdict build "$([ "$rc" = 0 ] && echo PASS || echo FAIL)" "background, rc $rc"
fi
if [ "$DRY" = 1 ]; then
  stage plan 300 python3 scripts/gpu_plan.py --compile "${GPU_PLAN_COMPILE:-24}" --json "$RES/gpu_plan.json"
elif [ -f "$RES/bench.json" ]; then
  python3 scripts/merge_bench.py "$RES/bench.json" "$RES/compile.json" "$RES/native-bench.json" -o "$RES/gpu.json" \
    && python3 benchmarks/report.py "$RES/gpu.json" --markdown "$RES/gpu.md" --plot "$RES/gpu.png" && cat "$RES/gpu.md"
fi
echo; echo "== verdicts ($(($(date +%s) - START))s of ${TOTAL}s; results in ${OUT:-$RES})"
cat "$VERDICTS"
pack
! grep -qv "^[a-z]* *PASS" "$VERDICTS"
