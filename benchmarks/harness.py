"""What every benchmark shares: the device and its sizes, the benchmark set, timing done one way,
the environment, and the device's measured limits (copy bandwidth, matmul rate).

Benchmark set (environment variable RESNET_FAST_BENCH):
  full   (default) GPU: resnet18/50/101 x batch 64/128/256; CPU: resnet18/50/101 at one size each;
  quick  resnet50 only (GPU: batch 256), plus every op benchmark: what scripts/gpu_check.sh runs in
         its ~4 minute benchmark budget.
Narrow further with pytest's -k (e.g. -k "not compile", -k resnet50).

Timing (`timed`): warm-up calls first (allocations, cuDNN autotuning, Triton compilation and
autotuning, torch.compile all happen there), then pytest-benchmark rounds of a target that runs
the case `inner` times and synchronizes the device; the median per call is what is reported, with
the 20th and 80th percentiles. Inputs are rotated among copies when one set would fit in the
device's last-level cache (`rotation`), so no timed call reads warm data left by the previous one.
"""

import datetime
import functools
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32  # GPU: bf16 autocast; CPU: float32
BENCH_SET = os.environ.get("RESNET_FAST_BENCH", "full").lower()
if BENCH_SET not in ("quick", "full"):
    raise ValueError(f"RESNET_FAST_BENCH must be 'quick' or 'full', got {BENCH_SET!r}")
QUICK = BENCH_SET == "quick"

if CUDA:
    torch.backends.cudnn.benchmark = True  # the strongest eager baseline: cuDNN picks its fastest kernels

# Model cases: architectures, and (batch, image size) per mode. CPU sizes finish in minutes on 2 cores.
MODELS = ["resnet50"] if QUICK else ["resnet18", "resnet50", "resnet101"]
if CUDA:
    INFER_SHAPES = [(256, 224)] if QUICK else [(64, 224), (128, 224), (256, 224)]
    TRAIN_SHAPES = INFER_SHAPES
    MODEL_ROUNDS = {"inference": 20, "train": 10}
else:
    INFER_SHAPES = [(8, 224)]
    TRAIN_SHAPES = [(4, 160)]
    MODEL_ROUNDS = {"inference": 7, "train": 5}
OP_BATCH = 256 if CUDA else 8
OP_ROUNDS = 20 if CUDA else 5


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({os.cpu_count()} cores)"


@functools.lru_cache(None)
def environment() -> Dict[str, object]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda if CUDA else None,
        "date": datetime.date.today().isoformat(),
        "bench_set": BENCH_SET,
    }


def cache_bytes() -> int:
    """The device's last-level cache: GPU L2, or the largest CPU cache sysfs reports (32 MiB if none)."""
    if CUDA:
        return getattr(torch.cuda.get_device_properties(DEVICE), "L2_cache_size", 50 << 20)
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in os.listdir(base) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return max(sizes, default=32 << 20)


def rotation(set_bytes: int, most: int = 8) -> int:
    """How many copies of an input set to rotate among: enough that 2x the cache is cycled through."""
    return max(1, min(most, math.ceil(2 * cache_bytes() / max(set_bytes, 1))))


def _median_time(fn: Callable[[], object], inner: int, reps: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


@functools.lru_cache(None)
def device_limits() -> Dict[str, float]:
    """Measured, not datasheet: copy bandwidth (bytes read + written per second, as GB/s) and the
    matmul rate in the benchmark dtype (TFLOP/s): what a memory-bound or a GEMM-bound kernel can reach."""
    n = (256 << 20) if CUDA else (64 << 20)  # elements: 512 MiB of bf16 on GPU, 256 MiB of float32 on CPU
    buf = {"src": torch.randn(n, device=DEVICE, dtype=DTYPE)}
    buf["dst"] = torch.empty_like(buf["src"])
    # The faster of a plain copy and a multiply-by-one: on some CPUs copy_ takes a slower path.
    t_copy = min(_median_time(lambda: buf["dst"].copy_(buf["src"]), inner=10 if CUDA else 2, reps=5),
                 _median_time(lambda: torch.mul(buf["src"], 1, out=buf["dst"]), inner=10 if CUDA else 2, reps=5))
    copy_gbps = 2 * n * buf["src"].element_size() / t_copy / 1e9
    buf.clear()
    m = 8192 if CUDA else 1024
    a = torch.randn(m, m, device=DEVICE, dtype=DTYPE)
    b = torch.randn(m, m, device=DEVICE, dtype=DTYPE)
    t_mm = _median_time(lambda: a @ b, inner=10 if CUDA else 2, reps=5)
    return {"copy_GBps": copy_gbps, "matmul_TFLOPs": 2 * m ** 3 / t_mm / 1e12, "dtype": str(DTYPE),
            "cache_bytes": cache_bytes()}


def timed(benchmark, fn: Callable[[], object], rounds: int, warmup: int = 2, inner: Optional[int] = None) -> float:
    """Times fn (see the module docstring) and returns its median seconds per call.

    inner None: chosen from one warm call so that a timed round lasts at least 2 ms (GPU) -- a
    round then holds many launches and one synchronization, so launch gaps and the sync itself are
    amortized as they are in a real loop."""
    for _ in range(warmup):
        fn()
    sync()
    if inner is None:
        t0 = time.perf_counter()
        fn()
        sync()
        one = time.perf_counter() - t0
        inner = max(1, min(50, math.ceil(2e-3 / max(one, 1e-7)))) if CUDA else 1

    def target():
        for _ in range(inner):
            fn()
        sync()

    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["inner_calls_per_round"] = inner
    stats = benchmark.stats
    if stats is None:  # --benchmark-disable: the target ran once, untimed
        return float("nan")
    data = sorted(stats.stats.data)
    q = statistics.quantiles(data, n=5, method="inclusive") if len(data) > 1 else [data[0]] * 4
    benchmark.extra_info.update(median_s=stats.stats.median / inner, p20_s=q[0] / inner, p80_s=q[3] / inner)
    return stats.stats.median / inner


def peak_memory_reset() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> Optional[int]:
    return torch.cuda.max_memory_allocated() if CUDA else None


def compare(benchmark, case: tuple, impl: str, median: float, baselines=("torchvision", "compile"),
            memory: Optional[int] = None) -> None:
    """Records what add_speedups needs: the case, the implementation, its median and peak memory."""
    info = benchmark.extra_info
    info.update(case=repr(case), impl=impl, median_s=median, baselines=list(baselines))
    if memory is not None:
        info["peak_memory_bytes"] = memory


def add_speedups(entries: List[Dict[str, object]]) -> None:
    """extra_info speedup_vs_<baseline> (baseline median / this median) for every baseline timed on the
    same case, and memory_vs_<first baseline>, once all cases have run: independent of their order."""
    medians, memories = {}, {}
    for e in entries:
        info = e.get("extra_info", {})
        if "case" in info:
            medians[(info["case"], info["impl"])] = info["median_s"]
            memories[(info["case"], info["impl"])] = info.get("peak_memory_bytes")
    for e in entries:
        info = e.get("extra_info", {})
        if "case" not in info or info["median_s"] != info["median_s"]:
            continue
        for base in info["baselines"]:
            seen = medians.get((info["case"], base))
            if seen is not None:
                info[f"speedup_vs_{base}"] = seen / info["median_s"]
        first = memories.get((info["case"], info["baselines"][0]))
        if info.get("peak_memory_bytes") is not None and first:
            info[f"memory_vs_{info['baselines'][0]}"] = info["peak_memory_bytes"] / first
