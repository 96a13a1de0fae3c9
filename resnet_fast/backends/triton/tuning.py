"""Per-shape choice of how a convolution runs on the GPU: the Triton implicit GEMM (with its fused
prologue/epilogue) in one of a few block configurations, or aten's convolution (cuDNN) with the
BatchNorm work done by the Triton memory-bound kernels around it.

The choice comes from measurement: the first call for a shape times every candidate on the actual
inputs (CUDA events, after a warm-up call that compiles the kernel) and keeps the fastest among those
whose output agrees with aten's (a miscompiled configuration is never chosen). Choices
are cached in memory and on disk (JSON), keyed by device name, torch and triton versions, so a
later process, or another machine of the same kind given the same file, makes the same choices:
    RESNET_FAST_TUNING_CACHE=path   the file (default ~/.cache/resnet_fast/conv_tuning.json)
    RESNET_FAST_CONV=auto|triton|aten  force a strategy (auto: measure; tests force both)
Nothing is measured on CPU (the Triton interpreter), with RESNET_FAST_CONV set, or while a CUDA graph
is being captured (a shape first seen during capture gets the heuristic default, not recorded; one
seen in the warm-up keeps its measured choice): the heuristic default below is used then.
"""

import functools
import json
import os
import statistics
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


class Config(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def name(self) -> str:
        return "triton_{}x{}x{}_w{}_s{}".format(*self)


ATEN = "aten"

# Candidates on the GPU (tl.dot needs every block dim >= 16; Hopper likes BLOCK_K >= 32, 3-4 stages).
_CANDIDATES = [Config(128, 128, 32, 8, 3), Config(128, 64, 32, 4, 4), Config(64, 128, 32, 4, 4),
               Config(64, 64, 32, 4, 3), Config(128, 128, 64, 8, 3), Config(64, 64, 64, 4, 3),
               Config(64, 32, 32, 4, 3), Config(32, 32, 16, 4, 3)]


def _pow2_at_least_16(n: int) -> int:
    p = 16
    while p < n:
        p *= 2
    return p


def default_config(cin_g: int, cout_g: int, m: int) -> Config:
    """A reasonable configuration without measuring (also what the interpreter tests run)."""
    if INTERPRET:
        return Config(32, 16, 16, 1, 1)  # several tiles on tiny shapes: exercises every mask
    bn = min(128, _pow2_at_least_16(cout_g))
    bk = 32 if cin_g >= 32 else 16
    bm = 128 if m >= 128 * 64 else 64
    return Config(bm, bn, bk, 8 if bm * bn >= 128 * 128 else 4, 3)


def candidates(cin_g: int, cout_g: int) -> List[Config]:
    limit = _pow2_at_least_16(cout_g)
    return [c for c in _CANDIDATES if c.block_n <= max(limit, 32) and (c.block_k <= 32 or cin_g >= 64)]


def _cache_path() -> str:
    return os.environ.get("RESNET_FAST_TUNING_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "resnet_fast", "conv_tuning.json"))


_memory: Dict[str, str] = {}
_loaded_from: Optional[str] = None


def _load() -> None:
    global _loaded_from
    path = _cache_path()
    if _loaded_from == path:
        return
    _loaded_from = path
    try:
        with open(path) as f:
            _memory.update(json.load(f))
    except (OSError, ValueError):
        pass  # no cache yet, or unreadable: measure again


def _save() -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_memory, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: choices stay in memory for this process


@functools.lru_cache(maxsize=None)
def _device_key(device: torch.device) -> str:
    import triton

    return f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}|triton {triton.__version__}"


def _time(run: Callable[[], object], reps: int = 5):
    """(median ms of `reps` timed calls, the first call's output). The first call also compiles /
    runs cuDNN's algorithm search, outside the timing."""
    first = run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), first


def _agrees(out, ref) -> bool:
    """A candidate's outputs match aten's within a bound loose enough for bf16 and tf32 rounding and
    tight enough to catch a miscompiled kernel (garbage, NaN, missing tiles): such a candidate is
    dropped, however fast."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    for a, b in zip(outs, refs):
        a, b = a.float(), b.float()
        if a.shape != b.shape or not bool(torch.isfinite(a).all()):
            return False
        if b.numel() and float((a - b).abs().max()) > 0.05 * float(b.abs().max()) + 1e-3:
            return False
    return True


def _parse(name: str):
    if name == ATEN:
        return ATEN
    dims = name[len("triton_"):].replace("_w", "x").replace("_s", "x").split("x")
    return Config(*(int(d) for d in dims))


def choose(key: str, device: torch.device, cin_g: int, cout_g: int, m: int, dtype: torch.dtype,
           run: Callable[[object], object]):
    """The strategy for one conv shape: ATEN or a Config. `run(choice)` executes the op that way."""
    forced = os.environ.get("RESNET_FAST_CONV", "auto").lower()
    if forced not in ("auto", "triton", ATEN):
        raise ValueError(f"RESNET_FAST_CONV must be auto, triton or aten; got {forced!r}")
    if dtype == torch.float64 or forced == ATEN:
        return ATEN  # the Triton GEMM accumulates in float32: float64 stays on aten
    if forced == "triton" or device.type != "cuda":
        return default_config(cin_g, cout_g, m)
    _load()
    full_key = f"{_device_key(device)}|{key}"
    if full_key in _memory:  # also while capturing: the choice the warm-up compiled
        return _parse(_memory[full_key])
    if torch.cuda.is_current_stream_capturing():
        return default_config(cin_g, cout_g, m)
    timings = {}
    timings[ATEN], reference = _time(lambda: run(ATEN))
    for cfg in candidates(cin_g, cout_g):
        try:
            elapsed, out = _time(lambda: run(cfg))
        except Exception:  # noqa: BLE001  (a configuration that does not compile or launch here, e.g.
            continue       # out of shared memory: it is simply not a candidate on this GPU)
        if _agrees(out, reference):
            timings[cfg.name()] = elapsed
    _memory[full_key] = min(timings, key=timings.get)
    _save()
    return _parse(_memory[full_key])
