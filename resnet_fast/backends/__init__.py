"""The backend registry: what each backend implements and where it runs (resnet_fast/_dispatch.py picks).

Every backend supplies the primitive contract, one signature everywhere (activations 4-D in the
backend's `layout`, per-channel vectors in the stat dtype, see resnet_fast/conventions.py):

  conv(x, weight, bias, stride, padding, dilation, groups) -> y
  conv_backward(dy, x, weight, stride, padding, dilation, groups, need_x, need_w) -> (dx, dw)
  channel_stats(y) -> (mean, biased var)                          per channel
  bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu) -> out
        out = act((x - mean)*scale + bias + r), r = (residual - res_mean)*res_scale + res_bias, residual or 0
  bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, mask)
        -> (dx, dres, Σg, Σg·(x - mean), Σg·(residual - res_mean)),  g = grad_out * (out > 0 if relu),
        dx = g*scale, dres = g*res_scale (or g); mask: five booleans in the same order, None where False

Each op of torch.ops.resnet_fast that dispatches (OPS) is written once over these primitives in
resnet_fast/composites.py. A backend overrides a whole op only where it fuses more than the composite
can (the Triton GEMM with its BN prologue and statistics / bias epilogues; oneDNN's conv with post-ops);
an override has the composite's signature (primitives first) and may call the composite to fall back.

Engines: a row may also declare, for conv_bn_stats and conv_bn_stats_backward, alternative implementations
of the op (same signature as an override) that the dispatch table (resnet_fast/backends/tables) chooses
per call from measurement; a call the table does not name, or whose engine cannot serve it (dtype,
device, package missing), runs the row's override or composite as before. `resnet_fast.use_engine` and
RESNET_FAST_ENGINE force one. The router is bound here, in load(): there is no second dispatch layer.

The table is checked when this module is imported (unknown op, hook or layout names raise) and again
when a backend's modules are loaded (a declared name that is missing, or an op-named function that is
not declared, raises): there is no silent fallback to another backend.
"""

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Set, Tuple

import torch

from .. import composites
from ..conventions import memory_format_of
from . import tables

PRIMITIVES = ("conv", "conv_backward", "channel_stats", "bn_act", "bn_act_backward")
OPS = ("conv_bn_stats", "conv_bn_stats_backward", "bn_act", "bn_act_backward", "conv_bias_act",
       "conv_bias_act_backward", "batch_stats", "batch_norm_act", "batch_norm_act_backward")
# How a backend runs a training conv -> BatchNorm -> ReLU unit (resnet_fast/functional.py):
#   "pending"       conv_bn_stats; the BatchNorm + ReLU stays pending and the next conv_bn_stats applies it to
#                   its operand as a prologue (a conv kernel that can, e.g. the Triton GEMM), recomputing it in
#                   backward instead of storing it;
#   "materialized"  aten's convolution, then batch_stats + batch_norm_act write BatchNorm (+ residual) + ReLU
#                   once and keep it for backward (where the conv cannot take a prologue, writing it once is the
#                   least traffic).
TRAINING = ("pending", "materialized")
# prepare_conv_weight(weight, input_shape, stride, padding, dilation, groups) -> the weight conv_bias_act
# runs fastest with for inputs of that shape (oneDNN's blocked layout on CPU); identity by default.
# train_conv(x, weight, stride, padding, dilation, groups) -> the differentiable convolution of a "materialized"
# training unit; aten's (F.conv2d) by default (native on CPU: small 1x1 convs as GEMMs, backends/native_gemm.py).
HOOKS = ("prepare_conv_weight", "train_conv")
LAYOUTS = {"input": memory_format_of, "channels_last": lambda x: torch.channels_last}


@dataclass(frozen=True)
class Engine:
    """An alternative implementation of one op, chosen per call by the dispatch table (or use_engine)."""
    target: str                          # "module:function" with the op's override signature (P first)
    dtypes: Tuple[torch.dtype, ...]      # activation dtypes it serves; others take the op's default
    devices: Tuple[str, ...] = ("cuda", "cpu")
    requires: Optional[str] = None       # "module:function" -> bool: whether it can run in this process


F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
_TRITON = "resnet_fast.backends.triton"
_CUDNN_OK = "resnet_fast.backends.cudnn:available"
# The engines the GPU probe measures per conv unit (names as in its tables); never run on a GPU yet.
TRITON_ENGINES = {
    "conv_bn_stats": {
        "triton-gemm": Engine(f"{_TRITON}.backend:conv_bn_stats_gemm", (F32, F16, BF16)),
        "aten+triton": Engine("resnet_fast.composites:conv_bn_stats", (F32, F16, BF16, F64)),
        "cudnn-fused": Engine("resnet_fast.backends.cudnn.engine:conv_bn_stats", (F16,), ("cuda",), _CUDNN_OK)},
    "conv_bn_stats_backward": {
        "aten+triton": Engine("resnet_fast.composites:conv_bn_stats_backward", (F32, F16, BF16, F64)),
        "triton-closed": Engine(f"{_TRITON}.closed_backward:conv_bn_stats_backward", (F32, F16, BF16)),
        "cudnn-fused": Engine("resnet_fast.backends.cudnn.engine:conv_bn_stats_backward", (F16,), ("cuda",),
                              _CUDNN_OK),
        # Triton wgrad (prologue on load) + cuDNN dgrad -> dReLU -> dx, dBN sums: the bfloat16 plan
        "closed-wgrad+cudnn-dgrad": Engine("resnet_fast.backends.cudnn.closed_wgrad:conv_bn_stats_backward",
                                           (F16, BF16), ("cuda",), _CUDNN_OK)},
}


@dataclass(frozen=True)
class Backend:
    name: str
    devices: Tuple[str, ...]      # device types it can serve, when available there (see _dispatch)
    layout: str                   # activations its primitives take: "input" (NCHW or NHWC as given) or NHWC
    primitives: str               # the module that defines every name in PRIMITIVES
    overrides: Mapping[str, str] = field(default_factory=dict)  # op -> "module:function"
    hooks: Mapping[str, str] = field(default_factory=dict)      # hook -> "module:function"
    engines: Mapping[str, Mapping[str, Engine]] = field(default_factory=dict)  # op -> engine name -> Engine
    training: str = "pending"     # one of TRAINING


BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("reference", devices=("cpu", "cuda", "*"), layout="input",
            primitives="resnet_fast.backends.eager"),
    Backend("native", devices=("cpu", "cuda"), layout="input", primitives="resnet_fast.backends.native",
            training="materialized",
            overrides={"conv_bias_act": "resnet_fast.backends.native:conv_bias_act",
                       "batch_norm_act": "resnet_fast.backends.native:batch_norm_act",
                       "batch_norm_act_backward": "resnet_fast.backends.native:batch_norm_act_backward"},
            hooks={"prepare_conv_weight": "resnet_fast.backends.native:prepare_conv_weight",
                   "train_conv": "resnet_fast.backends.native:train_conv"}),
    Backend("triton", devices=("cuda", "cpu"), layout="channels_last",
            primitives="resnet_fast.backends.triton.backend",
            overrides={"conv_bn_stats": "resnet_fast.backends.triton.backend:conv_bn_stats",
                       "conv_bias_act": "resnet_fast.backends.triton.backend:conv_bias_act"},
            engines=TRITON_ENGINES),
    # cuDNN fused graphs (float16) over the Triton primitives; other dtypes fall back to the composite.
    # Opt-in only (RESNET_FAST_BACKEND=cudnn / use_backend("cudnn")): never run on a GPU yet. The same engines
    # as the Triton row (a table entry or use_engine can send e.g. bfloat16 backward to triton-closed).
    Backend("cudnn", devices=("cuda",), layout="channels_last", primitives="resnet_fast.backends.triton.backend",
            overrides={"conv_bn_stats": "resnet_fast.backends.cudnn.engine:conv_bn_stats",
                       "conv_bn_stats_backward": "resnet_fast.backends.cudnn.engine:conv_bn_stats_backward",
                       "conv_bias_act": "resnet_fast.backends.triton.backend:conv_bias_act"},
            engines=TRITON_ENGINES),
)}


class Primitives(NamedTuple):
    """One backend's primitive set, the first argument of every composite and override."""
    conv: Callable
    conv_backward: Callable
    channel_stats: Callable
    bn_act: Callable
    bn_act_backward: Callable
    layout: Callable[[torch.Tensor], torch.memory_format]


def _check_table() -> None:
    assert Primitives._fields[:-1] == PRIMITIVES
    missing = [op for op in OPS if not callable(getattr(composites, op, None))]
    if missing:
        raise RuntimeError(f"resnet_fast.composites lacks a composite for {missing}")
    for b in BACKENDS.values():
        for kind, names, known in (("op", b.overrides, OPS), ("hook", b.hooks, HOOKS)):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"backend {b.name!r} declares unknown {kind}s {unknown}; known: {known}")
        unknown = sorted(set(b.engines) - set(tables.DIRECTIONS))
        if unknown:
            raise ValueError(f"backend {b.name!r} declares engines for {unknown}; the dispatch table keys only "
                             f"{sorted(tables.DIRECTIONS)}")
        if b.layout not in LAYOUTS:
            raise ValueError(f"backend {b.name!r} has layout {b.layout!r}; known: {sorted(LAYOUTS)}")
        if b.training not in TRAINING:
            raise ValueError(f"backend {b.name!r} has training {b.training!r}; known: {TRAINING}")


_check_table()


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise AttributeError(f"resnet_fast backend registry: {target} does not exist")
    return fn


def load(name: str) -> Tuple[Dict[str, Callable], Dict[str, Callable]]:
    """(op -> callable(*op_args), hook -> callable(*hook_args)) for backend `name`: its overrides where it declares
    them, else the composite over its primitives. Imports the backend's modules (and e.g. triton)."""
    b = BACKENDS[name]
    mod = importlib.import_module(b.primitives)
    absent = [p for p in PRIMITIVES if not callable(getattr(mod, p, None))]
    if absent:
        raise AttributeError(f"backend {name!r}: {b.primitives} lacks the primitives {absent}")
    undeclared = [op for op in OPS if op not in PRIMITIVES and op not in b.overrides and hasattr(mod, op)]
    if undeclared:
        raise RuntimeError(f"backend {name!r}: {b.primitives} defines {undeclared} without declaring them as "
                           "overrides in the registry (they would never run)")
    prims = Primitives(*(getattr(mod, p) for p in PRIMITIVES), LAYOUTS[b.layout])
    table = {}
    for op in OPS:
        fn = _resolve(b.overrides[op]) if op in b.overrides else getattr(composites, op)
        table[op] = _bind(fn, prims) if op not in b.engines else _route(op, fn, b.engines[op], prims)
    hooks = {h: _bind(_resolve(b.hooks[h]) if h in b.hooks else getattr(composites, h), prims) for h in HOOKS}
    return table, hooks


def _bind(fn: Callable, prims: Primitives) -> Callable:
    def op(*args):
        return fn(prims, *args)

    op.__name__ = op.__qualname__ = getattr(fn, "__name__", "op")
    op.__wrapped__ = fn
    return op


def engine_names() -> Dict[str, Set[str]]:
    """op -> the engine names any backend declares for it (what a dispatch table may name)."""
    out: Dict[str, Set[str]] = {}
    for b in BACKENDS.values():
        for op, engines in b.engines.items():
            out.setdefault(op, set()).update(engines)
    return out


_requirements: Dict[str, bool] = {}


def _can_run(engine: Engine, x: torch.Tensor) -> bool:
    # meta: scripts/sm90_compile.py runs the launch code on meta tensors that stand for CUDA ones
    device = "cuda" if x.device.type == "meta" else x.device.type
    if x.dtype not in engine.dtypes or device not in engine.devices:
        return False
    if engine.requires is None:
        return True
    if engine.requires not in _requirements:
        _requirements[engine.requires] = bool(_resolve(engine.requires)())
    return _requirements[engine.requires]


def _route(op: str, default: Callable, engines: Mapping[str, Engine], prims: Primitives) -> Callable:
    """The op as served with a dispatch table: per call, the engine tables.choose names (one it can
    serve), else `default` (the row's override or composite)."""
    impls = {name: _resolve(e.target) for name, e in engines.items()}

    def usable(name: str, x: torch.Tensor) -> bool:
        return name in engines and _can_run(engines[name], x)

    def op_fn(*args):
        name = tables.choose(op, args, usable)
        return (default if name is None else impls[name])(prims, *args)

    op_fn.__name__ = op_fn.__qualname__ = getattr(default, "__name__", "op")
    op_fn.__wrapped__ = default
    op_fn.engines = impls
    return op_fn


def engine_functions(name: str, op: str) -> Dict[str, Callable]:
    """Backend `name`'s engines for `op`, each callable(*op args) over the row's primitives (the probe
    times and checks exactly these)."""
    b = BACKENDS[name]
    mod = importlib.import_module(b.primitives)
    prims = Primitives(*(getattr(mod, p) for p in PRIMITIVES), LAYOUTS[b.layout])
    return {e: _bind(_resolve(spec.target), prims) for e, spec in b.engines.get(op, {}).items()}
