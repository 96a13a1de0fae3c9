"""Record and compile, for an H100/H200 (sm_90), the Triton kernel specializations a workload would
launch, on a machine without a GPU.

How: a fake Triton driver reports the target GPUTarget("cuda", 90, 32) (device 0, stream 0), and
Triton's JIT cache hook (knobs.runtime.jit_cache_hook) records each launch's specialization (the
JIT's own key: argument dtypes, the ==1 / %16 integer and pointer-alignment specialization unless a
parameter is in do_not_specialize, constexprs, num_warps / num_stages) and tells the JIT not to
compile or launch. The workloads run on meta tensors (shapes only, no data, no compute): the
resnet_fast custom ops are routed to the Triton backend's Python functions by a dispatch mode, so the
real launch code (block sizes, grids, configs) decides what is launched. Each recorded specialization
is then compiled with triton.compile (through JITFunction.preload) for sm_90 with the installed
triton and ptxas; the ptxas report gives registers and spills, the metadata the shared memory.

Used by scripts/gpu_plan.py; import this module before anything launches a Triton kernel.
"""

import contextlib
import io
import json
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SM90_SMEM_LIMIT = 232448  # bytes of shared memory one block may opt in to on sm_90 (227 KB)


class FakeSM90Driver:
    """Just enough of a Triton driver for the JIT to bind, specialize and compile for sm_90."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")

    def is_active(self):
        return True


def install_fake_driver() -> None:
    import triton

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreter never specializes; unset it")
    triton.runtime.driver.set_active(FakeSM90Driver())


def triton_module(name: str):
    """A module of the resnet_fast Triton backend package (backends/triton, formerly backends/gpu):
    launch, tuning, conv_kernels, bn_kernels."""
    import importlib

    for package in ("resnet_fast.backends.triton", "resnet_fast.backends.gpu"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ImportError:
            continue
    raise ImportError(f"no resnet_fast Triton backend module {name!r} found")


class _RouteToTriton(TorchDispatchMode):
    """Runs every torch.ops.resnet_fast op on meta tensors through the Triton backend's function
    (the custom ops' own Meta kernels are their fake kernels, which launch nothing)."""

    def __init__(self, kernel_for: Callable[[str, torch.Tensor], Callable]):
        super().__init__()
        self.kernel_for = kernel_for

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "resnet_fast":
            like = next(a for a in args if isinstance(a, torch.Tensor))
            try:
                impl = self.kernel_for(func._opname, like)
            except (KeyError, AttributeError):  # an op no backend serves (per-channel vector math):
                return func(*args, **kwargs)    # its meta kernel, which launches nothing either way
            return impl(*args, **kwargs)
        return func(*args, **kwargs)


def _kernel_for(op: str, like: torch.Tensor) -> Callable:
    from resnet_fast import _dispatch

    # Meta tensors stand for CUDA ones in this process only. (use_backend refuses a device the backend
    # cannot run on, and meta is one: the dispatcher's per-device choice is set directly.)
    choice = getattr(_dispatch, "_forced", None)
    if choice is None:
        choice = _dispatch._chosen
    choice["meta"] = "triton"
    return _dispatch.kernel(op, like)


class Recorder:
    """Collects the distinct specializations (and launch counts) of everything run inside record()."""

    def __init__(self):
        self.specs: Dict[str, dict] = {}

    def _hook(self, *, key, fn, compile, **_):  # noqa: A002
        entry = self.specs.setdefault(f"{fn.name}|{key}", {
            "kernel": fn.name, "module": fn.module, "data": compile["specialization_data"],
            "half": any(str(t) in ("*fp16", "*bf16") for t in compile["signature"].values()),
            "num_warps": compile["num_warps"], "num_stages": compile["num_stages"], "launches": 0})
        entry["launches"] += 1
        return True  # do not compile, do not launch

    @contextlib.contextmanager
    def record(self):
        from triton import knobs

        previous = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = self._hook
        try:
            with _RouteToTriton(_kernel_for):
                yield self
        finally:
            knobs.runtime.jit_cache_hook = previous


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _compile_one(spec: dict) -> dict:
    """Compiles one recorded specialization for sm_90 in this (worker) process."""
    import importlib

    from triton import knobs

    install_fake_driver()
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    knobs.nvidia.dump_ptxas_log = os.environ.get("SM90_PTXAS_LOG", "1") == "1"
    out = {"kernel": spec["kernel"], "half": spec["half"], "num_warps": spec["num_warps"],
           "num_stages": spec["num_stages"], "constants": json.loads(spec["data"]).get("constant_vals")}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = fn.preload(spec["data"])
        out["shared"] = int(compiled.metadata.shared)
        regs = [int(r) for r in _PTXAS.findall(log.getvalue())]
        spills = [int(a) + int(b) for a, b in _SPILL.findall(log.getvalue())]
        out.update(registers=max(regs) if regs else None, spill_bytes=max(spills) if spills else 0, error=None)
    except Exception as e:  # noqa: BLE001  (reported, and the dry run fails on it)
        out["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    out["seconds"] = time.perf_counter() - start
    return out


def _init_worker(cache_dir: str) -> None:
    if cache_dir:
        os.environ["TRITON_CACHE_DIR"] = cache_dir  # a fresh cache: every compile is real, and timed
    else:
        os.environ["SM90_PTXAS_LOG"] = "0"  # precompiling: the JIT's own cache, nothing else changed


def compile_all(specs: List[dict], workers: int, fresh_cache: bool = True) -> List[dict]:
    """Compiles specs in `workers` processes; results in the order given. fresh_cache: into a
    temporary Triton cache (the dry run: every compile real and timed); else into the JIT's own
    cache, so the processes that later launch these kernels load them instead of compiling (the GPU
    window's precompile stage: same target, specialization and options, hence the same cache key)."""
    if not specs:
        return []
    with compile_pool(workers, fresh_cache) as pool:
        return list(pool.map(_compile_one, specs))


@contextlib.contextmanager
def compile_pool(workers: int, fresh_cache: bool = True):
    """A process pool whose workers compile with _compile_one (see compile_all for fresh_cache)."""
    with tempfile.TemporaryDirectory(prefix="sm90-cache-") as cache:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                 initargs=(cache if fresh_cache else "",)) as pool:
            yield pool


def problems(results: List[dict]) -> List[str]:
    """What fails the dry run: a compile error, a spill in a float16/bfloat16 kernel, shared memory
    over the sm_90 limit. (float32/float64 kernels may spill: reported, not failed.)"""
    bad = []
    for r in results:
        what = f"{r['kernel']} w{r['num_warps']} s{r['num_stages']} {r['constants']}"
        if r["error"]:
            bad.append(f"compile error: {what}: {r['error'][:400]}")
        elif r["half"] and r["spill_bytes"]:
            bad.append(f"spills {r['spill_bytes']} B in a half-precision kernel: {what}")
        elif r["shared"] > SM90_SMEM_LIMIT:
            bad.append(f"shared memory {r['shared']} B > {SM90_SMEM_LIMIT} B: {what}")
    return bad


def summary(results: List[dict]) -> Dict[str, object]:
    times = [r["seconds"] for r in results if not r["error"]]
    return {"compiled": len(results), "errors": sum(bool(r["error"]) for r in results),
            "median_s": statistics.median(times) if times else None,
            "p90_s": sorted(times)[int(0.9 * (len(times) - 1))] if times else None,
            "max_shared": max((r.get("shared", 0) for r in results), default=0),
            "max_registers": max((r.get("registers") or 0 for r in results), default=0),
            "spilling": [f"{r['kernel']} {r['constants']} w{r['num_warps']}: {r['spill_bytes']} B"
                         for r in results if r.get("spill_bytes")]}
