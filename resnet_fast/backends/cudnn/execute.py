"""Running a UnitGraph: the cuDNN executor (plans built once per graph key, cached in memory and on disk
(plan_cache.py), executed on the current CUDA stream with a torch-allocated workspace, no host
synchronization) and two stand-ins
with the same call, `executor(unit, tensors)`:
  * TorchExecutor  evaluates the graph's math with torch ops (the CPU reference of the wiring: it reads
                   and writes exactly the bound tensors, by name);
  * Recording      logs each execution's bound tensors (byte accounting, wiring tests), runs nothing.
`tensors` maps every Binding name of the unit to a tensor of the binding's shape, strides and dtype.
"""

import threading
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from . import plan_cache
from .graphs import UnitGraph


def check_bindings(unit: UnitGraph, tensors: Dict[str, Tensor]) -> None:
    """Raises naming the first bound tensor whose name, shape, strides or dtype differ from the graph's."""
    want = {b.name: b for b in unit.bindings()}
    if set(tensors) != set(want):
        raise ValueError(f"{unit.pattern} graph binds {sorted(want)}, got {sorted(tensors)}")
    for name, b in want.items():
        t = tensors[name]
        strides_ok = all(d == 1 or st == want_st for d, st, want_st in zip(b.dims, t.stride(), b.strides))
        if tuple(t.shape) != b.dims or t.dtype != b.dtype or not strides_ok:  # a size-1 dim's stride is free
            raise ValueError(f"{unit.pattern} graph: {name} is {tuple(t.shape)} {t.dtype} strides {t.stride()}, "
                             f"expected {b.dims} {b.dtype} strides {b.strides}")


class CudnnExecutor:
    """Builds each distinct graph once (per device and key) and executes it.

    `build(unit, handle)` -> (graph, {name: cudnn tensor}, workspace bytes) is injectable so that the
    wiring (stream, workspace, cache) is testable without a GPU."""

    dtypes = (torch.float16,)  # the fused fprop / wgrad patterns have no bfloat16 engines (deviceless check)
    dgrad_dtypes = (torch.float16, torch.bfloat16)  # dgrad and dgrad_dbn: both (deviceless check, sm_90)

    def __init__(self, build: Optional[Callable] = None, handle_for: Optional[Callable] = None,
                 stream_of: Optional[Callable] = None, set_stream: Optional[Callable] = None):
        self._build = build or _build_plan
        self._handle_for = handle_for or _handle
        self._stream_of = stream_of or (lambda device: torch.cuda.current_stream(device).cuda_stream)
        self._set_stream = set_stream or _set_stream
        self._plans: Dict[tuple, tuple] = {}
        self._lock = threading.Lock()
        self.builds = 0

    def plan(self, unit: UnitGraph, device: torch.device):
        key = (str(device), unit.key())
        with self._lock:
            if key not in self._plans:
                self._plans[key] = self._build(unit, self._handle_for(device))
                self.builds += 1
            return self._plans[key]

    def __call__(self, unit: UnitGraph, tensors: Dict[str, Tensor]) -> None:
        check_bindings(unit, tensors)
        device = next(iter(tensors.values())).device
        graph, handles, workspace_bytes = self.plan(unit, device)
        handle = self._handle_for(device)
        self._set_stream(handle, self._stream_of(device))  # cuDNN launches on torch's current stream
        workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)
        graph.execute({handles[name]: t for name, t in tensors.items()}, workspace, handle=handle)


_handles: Dict[str, object] = {}


def _handle(device: torch.device):
    import cudnn

    key = str(device)
    if key not in _handles:
        with torch.cuda.device(device):
            _handles[key] = cudnn.create_handle()
    return _handles[key]


def _set_stream(handle, stream) -> None:
    import cudnn

    cudnn.set_stream(handle=handle, stream=stream)


def _build_plan(unit: UnitGraph, handle):
    """(graph, {binding name: cudnn tensor or uid}, workspace bytes): from the disk cache when a plan for
    this graph, device and cuDNN is there, else planned with heuristics A + fallback and saved."""
    import cudnn

    device_name = torch.cuda.get_device_name()
    cached = plan_cache.load(unit.key(), device_name, cudnn.backend_version())
    if cached is not None:
        try:
            graph = cudnn.pygraph(handle=handle)
            graph.deserialize(handle, cached[0])
            return graph, cached[1], graph.get_workspace_size()
        except Exception:  # noqa: BLE001  (a plan this cuDNN cannot load: build it again)
            pass
    graph, handles = unit.build(handle=handle)
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    plan_cache.save(unit.key(), device_name, cudnn.backend_version(), graph.serialize(as_bytes=True),
                    {name: t.get_uid() for name, t in handles.items()})
    return graph, handles, graph.get_workspace_size()


class TorchExecutor:
    """The graph's math in torch (float64 inside), writing the bound outputs in place."""

    dtypes = dgrad_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def __init__(self, supports: Optional[Callable] = None):
        self.supports = supports or (lambda unit: True)  # any graph by default: this is the math, not cuDNN

    def __call__(self, unit: UnitGraph, tensors: Dict[str, Tensor]) -> None:
        check_bindings(unit, tensors)
        conv = dict(stride=list(unit.stride), padding=list(unit.padding), dilation=list(unit.dilation))
        t = {k: v.double() for k, v in tensors.items() if v is not None}
        pre = t["x"] * t["scale"] + t["bias"] if unit.prologue else None
        if unit.pattern == "fprop":
            a = torch.relu(pre) if unit.prologue else t["x"]
            y = torch.nn.functional.conv2d(a, t["w"], **conv)
            tensors["y"].copy_(y)
            stored = tensors["y"].double()
            tensors["sum"].copy_(stored.sum(dim=(0, 2, 3), keepdim=True))
            tensors["sqsum"].copy_((stored * stored).sum(dim=(0, 2, 3), keepdim=True))
        elif unit.pattern == "wgrad":
            a = torch.relu(pre) if unit.prologue else t["x"]
            # (t["w"] is the output buffer: only its shape is used)
            _, dw, _ = torch.ops.aten.convolution_backward(t["dy"], a, t["w"], None, conv["stride"], conv["padding"],
                                                           conv["dilation"], False, [0, 0], 1, [False, True, False])
            tensors["w"].copy_(dw)
        else:
            shape = (unit.n, unit.c, unit.h, unit.w)
            dx, _, _ = torch.ops.aten.convolution_backward(t["dy"], t["dy"].new_empty(shape), t["w"], None,
                                                           conv["stride"], conv["padding"], conv["dilation"], False,
                                                           [0, 0], 1, [True, False, False])
            g = dx * (pre > 0) if unit.prologue else dx
            if unit.pattern == "dgrad_dbn":
                tensors["dx"].copy_(g * t["in_scale"])
                tensors["sum"].copy_(g.sum(dim=(0, 2, 3), keepdim=True))
                tensors["xsum"].copy_((g * (t["x"] - t["in_mean"])).sum(dim=(0, 2, 3), keepdim=True))
            else:
                tensors["dx"].copy_(g)


class Recording:
    """Logs `log(name, kind, reads, writes)` per execution (bound inputs are read, outputs written)."""

    dtypes = (torch.float16,)
    dgrad_dtypes = (torch.float16, torch.bfloat16)

    def __init__(self, log: Callable, supports: Optional[Callable] = None):
        from .deviceless import expected_support

        self.log = log
        self.supports = supports or expected_support  # what cuDNN would serve (measured deviceless)
        self.calls: List[tuple] = []

    def __call__(self, unit: UnitGraph, tensors: Dict[str, Tensor]) -> None:
        check_bindings(unit, tensors)
        self.calls.append((unit, dict(tensors)))
        roles = {b.name: b.role for b in unit.bindings()}
        self.log(f"cudnn.{unit.pattern}{'+sbr' if unit.prologue else ''}", "conv",
                 [t for n, t in tensors.items() if roles[n] == "in"],
                 [t for n, t in tensors.items() if roles[n] == "out"])
