"""The CPU dry run of scripts/gpu_check.sh's GPU window: which Triton specializations each stage
will compile on an H100/H200, do they compile for sm_90 (no error, no spill in float16/bfloat16, shared
memory within the limit), and does the plan fit its budget.

    python3 scripts/gpu_plan.py [--compile all|N] [--workers K] [--json FILE]
    python3 scripts/gpu_plan.py --precompile [--workers K]     (the GPU window's precompile stage)

Each stage's workload is replayed on meta tensors (scripts/sm90_compile.py: fake sm_90 driver, the
JIT's cache hook records every specialization, nothing is computed). The workloads are a model of
what the stage runs: the smoke stage is scripts/gpu_smoke.py's own step; the test stage mirrors the
shapes, dtypes and flags of the `-m gpu` tests (op tests on odd tiny shapes in float32 / float64 /
float16 / bfloat16 with and without prologue, both conv strategies; resnet18/50 steps and eval in three
dtypes; the batch-32 224x224 autocast step; autocast, CUDA-graph and compile tests); the benchmark
stage runs resnet50 at batch 256 and the op benchmarks' layers. `--compile N` compiles N
specializations (a representative subset: every half-precision one first, then one per kernel and
configuration); `all` compiles everything recorded.

--precompile (on the GPU machine, before the stages that launch kernels): records the same
workloads and compiles every specialization in K processes into Triton's own cache, so the smoke,
test and benchmark processes load their kernels instead of compiling them one by one on the
launching thread (a specialization the workload model misses is still compiled where launched).

The time estimate per stage is: process start-ups + new compiles x the median compile time measured
here / parallel workers + an execution allowance (constants below; the GPU-side numbers are
assumptions until a GPU run measures them). Exit status 1 if a compile fails, a half-precision
kernel spills, shared memory exceeds 227 KB, or an estimate exceeds its stage's budget.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.pop("TRITON_INTERPRET", None)

import sm90_compile  # noqa: E402

sm90_compile.install_fake_driver()

import torch  # noqa: E402

import plan_workloads as wl  # noqa: E402

# Per stage: (workers compiling in parallel, process start-ups, execution allowance in s, fixed extra s).
# Execution allowances are assumptions (H100/H200 class): tests ~150 s of GPU work serially (audit),
# spread over the xdist workers (~4x); torch.compile of resnet50 train + inference ~55 s of Inductor on
# 16 cores; the native stage's op benchmarks run in whatever its budget leaves (not estimated).
# The smoke / test / bench stages' compiles run in the background precompile stage's PRECOMPILE_WORKERS
# processes (started after env, stage by stage), so they count at that parallelism.
PRECOMPILE_WORKERS = 12
ESTIMATE = {
    "env": (1, 1, 3, 0), "smoke": (PRECOMPILE_WORKERS, 1, 15, 0), "tests": (PRECOMPILE_WORKERS, 1, 150 / 4, 20),
    "probe": (1, 1, 0, 0), "bench": (PRECOMPILE_WORKERS, 1, 45, 0), "compile": (1, 1, 10, 55),
    "native": (1, 2, 15, 0),
}
STARTUP_S = 12  # python3 + torch + triton + torchvision imports and the CUDA context, per process
STAGE_WORKLOADS = {"smoke": wl.smoke, "tests": wl.tests, "probe": wl.probe, "bench": wl.bench}
EXTRA_WORKLOADS = {"tuning": wl.candidates}  # checked by the dry run, never run in the window
RECORD_S = 25  # recording all stages' workloads on meta tensors (measured here: ~20 s on 2 busy cores)


def budgets():
    """(stage, budget seconds) in window order, from gpu_check.sh itself (one source of truth)."""
    out = subprocess.run(["bash", os.path.join(HERE, "gpu_check.sh"), "--print-plan"], check=True,
                         capture_output=True, text=True).stdout
    plan = [(line.split()[0], int(line.split()[1])) for line in out.splitlines() if line.strip()]
    return [p for p in plan if not p[0].endswith("*")], {p[0][:-1]: p[1] for p in plan if p[0].endswith("*")}


def record_stages(lazy=False):
    """{stage: Recorder} with each stage's distinct specializations (lazy: yields (stage, Recorder)
    as each stage is recorded)."""
    gen = _record(STAGE_WORKLOADS)
    return gen if lazy else dict(gen)


def _record(workloads):
    for stage, workload in workloads.items():
        rec = sm90_compile.Recorder()
        start = time.perf_counter()
        with rec.record():
            workload()
        print(f"  recorded {stage}: {len(rec.specs)} specializations, "
              f"{sum(s['launches'] for s in rec.specs.values())} launches ({time.perf_counter() - start:.1f} s)",
              flush=True)
        yield stage, rec


def precompile(workers):
    """Records stage by stage and compiles each stage's new specializations while the next records."""
    start, seen, futures = time.perf_counter(), set(), []
    with sm90_compile.compile_pool(workers, fresh_cache=False) as pool:
        for stage, rec in record_stages(lazy=True):
            new = [spec for key, spec in rec.specs.items() if key not in seen]
            seen.update(rec.specs)
            futures += [pool.submit(sm90_compile._compile_one, spec) for spec in new]
        results = [f.result() for f in futures]
    errors = [r for r in results if r["error"]]
    print(f"precompiled {len(results) - len(errors)} of {len(results)} specializations in "
          f"{time.perf_counter() - start:.0f} s ({workers} workers); errors: {len(errors)}")
    for r in errors[:5]:
        print(f"  {r['kernel']}: {r['error'][:300]}")
    return 1 if errors else 0


def representative(specs, n):
    """n specializations: half the picks from the conv GEMM (the kernel with the spill and shared
    memory risk), half round-robin over the other kernels; within each kernel half precision first
    (the spill rule) and distinct constexpr sets (taps, block sizes, flags) before repeats."""
    by_kernel = {}
    for key, s in sorted(specs.items(), key=lambda kv: (not kv[1]["half"], kv[0])):
        by_kernel.setdefault(s["kernel"], []).append(key)

    def diverse(keys):
        seen, first, rest = set(), [], []
        for key in keys:
            s = specs[key]
            vals = json.loads(s["data"]).get("constant_vals") or []
            cls = (s["half"], s["num_warps"], s["num_stages"], str(vals[-3:]),  # block sizes, then flags
                   str([v for v in vals if isinstance(v, (bool, str))]))
            (first if cls not in seen else rest).append(key)
            seen.add(cls)
        return first + rest

    queues = {k: diverse(v) for k, v in by_kernel.items()}
    conv = [k for k in queues if "conv" in k]
    picks = [key for k in conv for key in queues.pop(k)][:n // 2]
    while len(picks) < n and any(queues.values()):
        for k in list(queues):
            if queues[k] and len(picks) < n:
                picks.append(queues[k].pop(0))
    return picks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", default="24", help="'all' or how many specializations to compile")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--json", help="write counts, compile results and estimates here")
    ap.add_argument("--precompile", action="store_true", help="compile everything into the JIT's cache")
    args = ap.parse_args(argv)
    if args.precompile:
        return precompile(args.workers)
    plan, background = budgets()
    print(f"window plan: {' '.join(f'{s}={b}s' for s, b in plan)}, total {sum(b for _, b in plan)} s; "
          f"background: {' '.join(f'{s}={b}s' for s, b in background.items())}")
    recs = record_stages()
    recs.update(_record(EXTRA_WORKLOADS))
    union, new_per_stage, seen = {}, {}, set()
    for stage, _ in plan:
        specs = recs[stage].specs if stage in recs else {}
        new_per_stage[stage] = [k for k in specs if k not in seen]
        seen.update(specs)
        union.update(specs)
    union.update(recs["tuning"].specs)
    keys = list(union) if args.compile == "all" else representative(union, int(args.compile))
    print(f"compiling {len(keys)} of {len(union)} distinct specializations for sm_90 ({args.workers} workers)")
    start = time.perf_counter()
    results = sm90_compile.compile_all([union[k] for k in keys], args.workers)
    summ = sm90_compile.summary(results)
    bad = sm90_compile.problems(results)
    print(f"  compiled in {time.perf_counter() - start:.1f} s: {summ['errors']} errors, median "
          f"{summ['median_s'] or 0:.2f} s, p90 {summ['p90_s'] or 0:.2f} s per specialization, max shared "
          f"{summ['max_shared']} B (limit {sm90_compile.SM90_SMEM_LIMIT}), max registers {summ['max_registers']}")
    for line in summ["spilling"]:
        print(f"  spills: {line}")
    per_compile = summ["median_s"] or 1.0

    print(f"\n{'stage':8} {'specs':>6} {'new':>5} {'conv':>5} {'bn':>4} {'estimate':>9} {'budget':>7}")
    report, over = [], []
    for stage, budget in plan:
        specs = recs[stage].specs if stage in recs else {}
        workers, starts, execution, extra = ESTIMATE.get(stage, (1, 1, 0, 0))
        new = len(new_per_stage[stage])
        est = STARTUP_S * starts + new * per_compile / workers + execution + extra
        if stage == "probe":
            est = budget  # its own script keeps to the budget it is given
        conv = sum("conv" in s["kernel"] for s in specs.values())
        print(f"{stage:8} {len(specs):6} {new:5} {conv:5} {len(specs) - conv:4} {est:8.0f}s {budget:6}s"
              + ("  OVER" if est > budget else ""))
        if est > budget:
            over.append(stage)
        report.append(dict(stage=stage, specializations=len(specs), new=new, conv=conv, estimate_s=round(est, 1),
                           budget_s=budget))
    est = STARTUP_S + RECORD_S + len(seen) * per_compile / PRECOMPILE_WORKERS
    print(f"{'precompile (background)':24} {len(seen):6} specializations {est:8.0f}s {background['precompile']:6}s"
          + ("  OVER" if est > background["precompile"] else ""))
    if est > background["precompile"]:
        over.append("precompile")
    report.append(dict(stage="precompile", specializations=len(seen), estimate_s=round(est, 1),
                       budget_s=background["precompile"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"plan": report, "compile": summ, "problems": bad, "results": results,
                       "triton": __import__("triton").__version__, "torch": torch.__version__}, f, indent=1)
    for line in bad:
        print(f"PROBLEM {line}")
    for stage in over:
        print(f"PROBLEM stage {stage}: estimate over budget")
    ok = not bad and not over
    print(f"gpu_plan: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
