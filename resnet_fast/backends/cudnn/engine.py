"""conv_bn_stats and conv_bn_stats_backward on cuDNN fused graphs (float16), as registry overrides: the
composites' signatures, primitives `P` first (resnet_fast/backends/__init__.py has the contract).

Forward, one graph:   y, sum y, sum y^2 = fprop graph(x, scale', bias', W)    (BN+ReLU on load, stats fused)
                      mean = sum/M, var = max(sum y^2/M - mean^2, 0)         (per channel, torch)
Backward:             dy = grad_y + (y - mean)*2*grad_var/M + grad_mean/M    (P.bn_act, one pass: the BN
                                                                              statistics' chain rule)
                      dW = wgrad graph(x, scale', bias', dy)                  (prologue recomputed on load)
                      dx, sum g, sum g*(x - in_mean) = dgrad_dbn graph(dy, W, x, scale', bias', in_scale,
                           in_mean), g = dReLU(dgrad(dy))                     (mask recomputed, dBN sums and
                                                                              dx = g*in_scale in its epilogue)
                      without a prologue: dx = dgrad graph(dy, W)
with scale' = in_scale, bias' = in_bias - in_mean*in_scale in the activations' dtype. The chain rule stays a
pass of its own: no cuDNN engine takes a pointwise prologue on the dgrad / wgrad loss operand (deviceless
check_support, cuDNN 9.24, sm_90: "no valid engine configs"); the Triton closed backward applies it on load.
Note the variance
comes from sums (E[y^2] - E[y]^2, as cuDNN's genstats gives them): less robust than the Triton
backend's Chan merge when |mean| >> std.

P is the Triton backend's primitive set on the GPU (`primitives()`), which runs those two passes as Triton
kernels. A call cuDNN cannot serve (a dtype other than float16, groups, a prologue without ReLU, a graph
without an engine, such as the 3-channel stem's fprop) goes to FALLBACK[op], the composite over P unless
`using_fallback` installs another function of the same signature. Which executor runs the graphs is
module state: CudnnExecutor on the GPU, replaceable for tests and byte accounting (`use_executor`,
`recording`).
"""

import contextlib
import functools
import importlib
from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor

from ... import backends, composites
from ...conventions import memory_format_of, stat_dtype
from .execute import CudnnExecutor, Recording
from .graphs import UnitGraph

IMPLEMENTS = {"conv_bn_stats": (torch.float16,), "conv_bn_stats_backward": (torch.float16,)}
CL = torch.channels_last

FALLBACK: Dict[str, Callable] = {op: getattr(composites, op) for op in IMPLEMENTS}
_state = {"executor": None}
_support: Dict[str, bool] = {}


def primitives(name: str = "triton") -> "backends.Primitives":
    """Backend `name`'s primitive set (the engine's P on the GPU: Triton's)."""
    b = backends.BACKENDS[name]
    mod = importlib.import_module(b.primitives)
    return backends.Primitives(*(getattr(mod, p) for p in backends.PRIMITIVES), backends.LAYOUTS[b.layout])


def set_fallback(table: Dict[str, Callable]) -> None:
    """Who serves the calls cuDNN cannot: op name -> function (P, *op args)."""
    FALLBACK.update({op: fn for op, fn in table.items() if op in IMPLEMENTS})


@contextlib.contextmanager
def using_fallback(table: Dict[str, Callable]):
    saved = dict(FALLBACK)
    set_fallback(table)
    try:
        yield
    finally:
        FALLBACK.update(saved)


def executor():
    if _state["executor"] is None:
        _state["executor"] = CudnnExecutor()
    return _state["executor"]


@contextlib.contextmanager
def use_executor(ex):
    saved, _state["executor"] = _state["executor"], ex
    _support_saved = dict(_support)
    try:
        yield ex
    finally:
        _state["executor"] = saved
        _support.clear()
        _support.update(_support_saved)


def recording(recorder):
    """Executions logged to recorder.log(name, kind, reads, writes) and not run (byte accounting)."""
    return use_executor(Recording(recorder.log))


def bound(P) -> Dict[str, Callable]:
    """op -> callable(*op args) over primitives P (what the registry's load() makes of an override)."""
    return {"conv_bn_stats": functools.partial(conv_bn_stats, P),
            "conv_bn_stats_backward": functools.partial(conv_bn_stats_backward, P)}


def _unit(pattern: str, x: Tensor, weight: Tensor, stride, padding, dilation, prologue: bool) -> UnitGraph:
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    return UnitGraph(pattern, n, c, h, w, k, r, s, tuple(stride), tuple(padding), tuple(dilation), prologue, x.dtype)


def _servable(op: str, x: Tensor, in_scale, in_relu: bool, groups: int) -> bool:
    return x.dtype in executor().dtypes and groups == 1 and (in_scale is None or bool(in_relu))


def supported(unit: UnitGraph, device: torch.device) -> bool:
    """cuDNN has an engine for this graph (on the GPU: a plan builds, asked once per key; stand-in executors
    answer themselves)."""
    ex = executor()
    if not isinstance(ex, CudnnExecutor):
        return ex.supports(unit)
    key = f"{device}|{unit.key()}"
    if key not in _support:
        try:
            ex.plan(unit, device)  # built once, kept in the executor's cache
            _support[key] = True
        except Exception:  # noqa: BLE001  (no engine builds for this graph on this GPU: fall back, for good)
            _support[key] = False
    return _support[key]


def _vectors(x: Tensor, in_mean, in_scale, in_bias, dtype=None) -> Dict[str, Tensor]:
    """scale' and bias' (the BN shift folded in) as [1, C, 1, 1] in `dtype` (default x's)."""
    c, dtype = x.shape[1], dtype or x.dtype
    bias = in_bias - in_mean * in_scale if in_mean is not None else in_bias
    return {"scale": in_scale.to(dtype).reshape(1, c, 1, 1), "bias": bias.to(dtype).reshape(1, c, 1, 1)}


def _nhwc(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=CL)


def conv_bn_stats(P, x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    prologue = in_scale is not None
    unit = _unit("fprop", x, weight, stride, padding, dilation, prologue) if x.dim() == 4 else None
    if unit is None or not _servable("conv_bn_stats", x, in_scale, in_relu, groups) or not supported(unit, x.device):
        return FALLBACK["conv_bn_stats"](P, x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation,
                                         groups)
    p, q = unit.out_hw
    y = torch.empty((unit.n, unit.k, p, q), dtype=x.dtype, device=x.device, memory_format=CL)
    sums = torch.empty((2, 1, unit.k, 1, 1), dtype=stat_dtype(x.dtype), device=x.device)
    tensors = {"x": _nhwc(x), "w": _nhwc(weight), "y": y, "sum": sums[0], "sqsum": sums[1]}
    if prologue:
        tensors.update(_vectors(x, in_mean, in_scale, in_bias))
    executor()(unit, tensors)
    count = unit.n * p * q
    mean = sums[0].view(unit.k) / count
    var = (sums[1].view(unit.k) / count - mean * mean).clamp_min(0)
    return y.contiguous(memory_format=memory_format_of(x)), mean, var


def conv_bn_stats_backward(P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    prologue = in_scale is not None
    need_z = need_x or need_mean or need_scale or need_bias
    units = [_unit(pat, x, weight, stride, padding, dilation, prologue)
             for pat, need in (("wgrad", need_w), ("dgrad_dbn" if prologue else "dgrad", need_z)) if need]
    servable = _servable("conv_bn_stats_backward", x, in_scale, in_relu, groups)
    if not servable or not all(supported(u, x.device) for u in units):
        return FALLBACK["conv_bn_stats_backward"](P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias,
                                                  in_relu, weight, y, mean, stride, padding, dilation, groups,
                                                  output_mask)
    dy = chain_rule(P, grad_y, grad_var, grad_mean, y, mean)
    xs = _nhwc(x)
    vectors = _vectors(x, in_mean, in_scale, in_bias) if prologue else {}
    empty = x.new_empty(0)
    dw = empty
    if need_w:
        dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=CL)
        executor()(units[0], {"x": xs, **vectors, "dy": dy, "w": dw})
        dw = dw.contiguous(memory_format=memory_format_of(weight))
    if not need_z:
        return [empty, empty, empty, empty, dw]
    return data_gradient(units[-1], dy, x, in_mean, in_scale, vectors, weight, output_mask) + [dw]


def chain_rule(P, grad_y, grad_var, grad_mean, y, mean) -> Tensor:
    """dy = grad_y + (y - mean)*2*grad_var/M + grad_mean/M, NHWC in y's dtype: one pass of P.bn_act."""
    count = y.numel() // y.shape[1]
    return P.bn_act(_nhwc(y), mean, grad_var * (2.0 / count), grad_mean / count, _nhwc(grad_y), None, None, None,
                    False)


def data_gradient(unit: UnitGraph, dy: Tensor, x: Tensor, in_mean, in_scale, vectors: Dict[str, Tensor], weight: Tensor,
                  output_mask: Sequence[bool]) -> List[Tensor]:
    """[dx, d in_mean, d in_scale, d in_bias] from the dgrad graph `unit` ("dgrad", or "dgrad_dbn" with the
    prologue); vectors = _vectors(...) of the prologue ({} without)."""
    need_x, need_mean, need_scale, need_bias, _ = output_mask
    empty = x.new_empty(0)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=CL)
    if not unit.prologue:
        executor()(unit, {"dy": dy, "w": _nhwc(weight), "dx": dx})
        return [dx.contiguous(memory_format=memory_format_of(x)), empty, empty, empty]
    # g = dL/d(pre-activation), in the graph only: dx = g*in_scale, d in_bias = sum g,
    # d in_scale = sum g*(x - in_mean), d in_mean = -in_scale*sum g (dx is written even when only sums are needed)
    c, sdt = x.shape[1], stat_dtype(x.dtype)
    # zeroed: whether cuDNN's fused reduction writes or accumulates (split-K style) is unverified on a GPU;
    # two allocations: outputs of a custom op may not alias each other (torch.library raises)
    sums = [torch.zeros((1, c, 1, 1), dtype=sdt, device=x.device) for _ in range(2)]
    centre = in_mean if in_mean is not None else in_scale.new_zeros(c)
    executor()(unit, {"dy": dy, "w": _nhwc(weight), "x": _nhwc(x), **vectors, "dx": dx, "sum": sums[0],
                      "xsum": sums[1], "in_scale": in_scale.to(sdt).reshape(1, c, 1, 1),
                      "in_mean": centre.to(sdt).reshape(1, c, 1, 1)})
    total, xsum = sums[0].view(c), sums[1].view(c)
    return [dx.contiguous(memory_format=memory_format_of(x)) if need_x else empty,
            -in_scale * total if need_mean and in_mean is not None else empty,
            xsum if need_scale else empty, total if need_bias else empty]
