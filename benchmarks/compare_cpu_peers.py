"""CPU inference against ONNX Runtime, alternated in one process: the benchmark's own step functions
(benchmarks/test_models.py: same weights, same inputs, same ONNX export), without pytest.

    python benchmarks/compare_cpu_peers.py [--arch resnet50] [--batch 1 8] [--rounds 15]
        [--impls onnxruntime,resnet_fast_optimized,resnet_fast_per_conv,torchvision_nchw] [--threads N]
        [--quiet 0.1]

Per batch: every implementation is built and warmed up, then each round runs each once, in turn, with
test_models.SETTLE_S of pause before each call; with --quiet a round starts only once
the rest of the machine is (nearly) idle, waiting up to 10 minutes. Prints JSON: medians, p20/p80, every ratio to
ONNX Runtime, each round's ratios' median (robust to slow minutes of a shared machine), the 1-minute
load average before each round, minor page faults and system CPU time per call, the environment.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import test_models  # noqa: E402


def busy_fraction(seconds: float = 0.5) -> float:
    """The machine's non-idle CPU fraction over `seconds` (Linux /proc/stat; this process sleeps meanwhile)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(n) for n in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all jiffies, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(limit: float, patience_s: float = 600.0) -> float:
    """Waits (at most patience_s) until the other load is below `limit`; returns the last reading."""
    deadline = time.time() + patience_s
    busy = busy_fraction()
    while busy > limit and time.time() < deadline:
        busy = busy_fraction()
    return busy


def faults_and_sys(fn, calls: int = 3):
    """(minor page faults, system CPU ms) per call of fn."""
    fn()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (r1.ru_minflt - r0.ru_minflt) / calls, (r1.ru_stime - r0.ru_stime) / calls * 1e3


def run(arch: str, batch: int, impls, rounds: int, quiet: float):
    with contextlib.redirect_stdout(sys.stderr):  # torch.onnx.export's progress lines: keep stdout JSON
        steps = {impl: test_models.inference_step(arch, batch, 224, impl) for impl in impls}
    for fn in steps.values():
        for _ in range(3):
            fn()
    times = {impl: [] for impl in steps}
    loads, busy = [], []
    for _ in range(rounds):
        if quiet < 1.0:
            busy.append(round(wait_quiet(quiet), 3))
        loads.append(round(os.getloadavg()[0], 2))
        for impl, fn in steps.items():
            time.sleep(test_models.SETTLE_S)
            t0 = time.perf_counter()
            fn()
            times[impl].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = "onnxruntime" if "onnxruntime" in times else impls[0]
    out = {"batch": batch, "rounds": rounds, "median_ms": {k: v * 1e3 for k, v in med.items()},
           "p20_p80_ms": {k: [q * 1e3 for q in statistics.quantiles(v, n=5)[::3]] for k, v in times.items()},
           f"speedup_vs_{base}": {k: med[base] / v for k, v in med.items()},
           f"per_round_speedup_vs_{base}_median": {
               k: statistics.median(b / t for b, t in zip(times[base], v)) for k, v in times.items()},
           "load_average_1min_per_round": loads, "busy_fraction_before_round": busy}
    out["faults_sys_ms_per_call"] = {k: faults_and_sys(fn) for k, fn in steps.items()}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--impls", default="onnxruntime,resnet_fast_optimized,resnet_fast_per_conv,torchvision_nchw")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", type=float, default=1.0,
                   help="start a round only once the machine's CPU use over 0.5 s is below this fraction")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = [i for i in args.impls.split(",") if i != "onnxruntime" or test_models.HAVE_ORT]
    results = [run(args.arch, b, impls, args.rounds, args.quiet) for b in args.batch]
    env = dict(harness.environment(), cpu_threads=torch.get_num_threads(), command=" ".join(sys.argv))
    if test_models.HAVE_ORT:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    print(json.dumps({"arch": args.arch, "results": results, "environment": env}, indent=1))


if __name__ == "__main__":
    main()
