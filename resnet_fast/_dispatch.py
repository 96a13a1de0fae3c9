"""The one place that decides which backend serves the resnet_fast ops on each device type.

Backends are declared in resnet_fast/backends/__init__.py (what each implements, where it runs):
  reference  plain PyTorch primitives (resnet_fast/backends/eager.py), every device;
  native     the C++ (CPU) / CUDA C++ kernels of resnet_fast._C for the memory-bound parts, aten for the
             convolution, oneDNN's fused conv for eval on CPU (resnet_fast/backends/native.py);
  triton     Triton kernels (resnet_fast/backends/triton): implicit-GEMM conv with the BN prologue and
             statistics / bias-residual-ReLU epilogues, BN apply and backward passes.
Every op a backend does not override runs its composite over that backend's primitives; nothing falls
back silently to another backend.

Choice, per device type, made on first use unless RESNET_FAST_BACKEND or use_backend overrides it:
  cpu   native when resnet_fast._C loaded, else reference (triton only when asked for and
        TRITON_INTERPRET=1: the interpreter, for tests);
  cuda  triton when triton imports and the GPU is sm_80 or newer, else reference. The CUDA C++
        kernels (native) compile in CI but have not yet run on a GPU: they serve only when asked for.
  other reference.
  cudnn (cuDNN fused graphs for float16, Triton elsewhere) only when asked for: never run on a GPU yet.
RESNET_FAST_BACKEND=reference|native|triton|cudnn|auto (default auto); an unavailable request warns and
takes the reference. resnet_fast.use_backend(name) forces one in a `with` block, and raises instead.

Within a backend, conv_bn_stats and its backward may have alternative engines (the registry's `engines`;
Triton: triton-gemm, aten+triton, cudnn-fused forward; aten+triton, triton-closed, cudnn-fused,
closed-wgrad+cudnn-dgrad backward), chosen per call by the measured dispatch table (resnet_fast/backends/tables)
or forced with resnet_fast.use_engine(op, name) / RESNET_FAST_ENGINE=op=name[,op=name]. Unverified on a GPU.
"""

import contextlib
import os
import warnings
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from . import backends

try:
    from . import _C  # noqa: F401  (registers torch.ops.resnet_fast_C)

    _NATIVE_ERROR = None
except ImportError as e:  # built with RESNET_FAST_SKIP_BUILD=1, or not built at all
    _NATIVE_ERROR = f"{type(e).__name__}: {e}"

_BACKENDS = tuple(backends.BACKENDS)


def _triton_supports(device_type: str) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device_type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def _native_supports(device_type: str) -> bool:
    if _NATIVE_ERROR is not None or device_type not in ("cpu", "cuda"):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast_C::channel_stats",
                                                          "CPU" if device_type == "cpu" else "CUDA")


def available(name: str, device_type: str) -> bool:
    """Whether backend `name` can serve tensors of `device_type` in this process."""
    if name not in backends.BACKENDS:
        raise ValueError(f"unknown resnet_fast backend {name!r}; known: {', '.join(_BACKENDS)}")
    if name == "native":
        return _native_supports(device_type)
    if name == "triton":
        return _triton_supports(device_type)
    if name == "cudnn":
        return _cudnn_supports(device_type)
    return True


def _cudnn_supports(device_type: str) -> bool:
    if device_type != "cuda" or not _triton_supports(device_type):
        return False
    from .backends import cudnn

    return cudnn.available()


def _choose(device_type: str) -> str:
    wanted = os.environ.get("RESNET_FAST_BACKEND", "auto").lower()
    if wanted not in (*_BACKENDS, "auto"):
        raise ValueError(f"RESNET_FAST_BACKEND must be one of auto, {', '.join(_BACKENDS)}; got {wanted!r}")
    if wanted == "reference":
        return "reference"
    if wanted == "cudnn":
        if _cudnn_supports(device_type):
            return "cudnn"
        if device_type == "cuda":
            warnings.warn(f"resnet_fast: the cuDNN backend cannot serve cuda ({unavailable_reason('cudnn', 'cuda')}); "
                          "using the Triton or reference backend")
        wanted = "auto"  # cudnn serves CUDA only: other devices keep their automatic choice
    if wanted == "triton" or (wanted == "auto" and device_type == "cuda"):
        if _triton_supports(device_type):
            return "triton"
        if wanted == "triton":
            warnings.warn(f"resnet_fast: the Triton backend cannot serve {device_type} (needs triton, and a GPU "
                          "of compute capability 8.0+, or TRITON_INTERPRET=1 on CPU); using the reference backend")
        return "reference"  # auto on CUDA never picks the CUDA C++ kernels: unverified on hardware
    if device_type not in ("cpu", "cuda") or not _native_supports(device_type):
        if wanted == "native":
            warnings.warn(f"resnet_fast: native kernels unavailable on {device_type} "
                          f"({_NATIVE_ERROR or 'not built for this device'}); using the reference backend")
        return "reference"
    return "native"


_auto: Dict[str, str] = {}     # device type -> the choice above, made once
_forced: Dict[str, str] = {}   # device type -> backend, inside use_backend
_loaded: Dict[str, Tuple[Dict[str, Callable], Dict[str, Callable]]] = {}


def backend_name(device_type: str) -> str:
    """The backend serving `device_type` now."""
    if device_type in _forced:
        return _forced[device_type]
    if device_type not in _auto:
        _auto[device_type] = _choose(device_type)
    return _auto[device_type]


@contextlib.contextmanager
def use_backend(name: str, devices: Optional[Sequence[str]] = None) -> Iterator[None]:
    """Within the block, backend `name` serves the ops on `devices` (default: every device type it can
    serve here). Raises ValueError for an unknown name, and RuntimeError where it cannot serve a device
    given (e.g. triton on cpu without TRITON_INTERPRET=1) or, without `devices`, any device at all;
    nothing changes then."""
    if name not in backends.BACKENDS:
        raise ValueError(f"unknown resnet_fast backend {name!r}; known: {', '.join(_BACKENDS)}")
    if devices is None:
        devices = [d for d in ("cpu", "cuda") if available(name, d)]
        if not devices:
            raise RuntimeError(f"the {name} backend cannot serve any device here: {unavailable_reason(name, 'cpu')}")
    else:
        devices = [torch.device(d).type for d in devices]
        missing = [d for d in devices if not available(name, d)]
        if missing:
            raise RuntimeError(f"the {name} backend cannot serve {', '.join(missing)} here: "
                               f"{unavailable_reason(name, missing[0])}")
    _table(name)  # load (and check) it now, not half way through a model
    saved = dict(_forced)
    _forced.update({d: name for d in devices})
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(saved)


@contextlib.contextmanager
def use_engine(op: str, name: str) -> Iterator[None]:
    """Within the block, engine `name` serves `op` (conv_bn_stats or conv_bn_stats_backward) on every backend
    that declares it, for each call it can serve (its dtypes, devices, package); other calls keep the
    backend's default. This bypasses the dispatch table and its check against aten: the caller's choice.
    ValueError for an op without engines or an unknown engine name. The GPU engines (triton-closed,
    closed-wgrad+cudnn-dgrad, cudnn-fused, triton-gemm through this switch) have been tested on CPU only, never
    run on a GPU."""
    with backends.tables.forced(op, name):
        yield


def unavailable_reason(name: str, device_type: str) -> str:
    if name == "native":
        return _NATIVE_ERROR or f"resnet_fast._C was built without {device_type} kernels"
    if name == "triton":
        return ("triton needs a GPU of compute capability 8.0+, or TRITON_INTERPRET=1 set before triton is "
                f"imported to run on CPU (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r})")
    if name == "cudnn":
        return ("the cuDNN fused-graph backend needs a CUDA GPU of compute capability 8.0+ with triton, and "
                "nvidia-cudnn-frontend (pip install 'resnet_fast[cudnn]')")
    return "available everywhere"


def _table(name: str):
    if name not in _loaded:
        _loaded[name] = backends.load(name)
    return _loaded[name]


def kernel(op: str, like: torch.Tensor) -> Callable:
    """The implementation of `op` for tensors on like.device (KeyError for a name that is not an op)."""
    return _table(backend_name(like.device.type))[0][op]


def training_style(device_type: str) -> str:
    """How training units run on device_type: "pending" or "materialized" (resnet_fast/backends/__init__.py)."""
    return backends.BACKENDS[backend_name(device_type)].training


def prepares_conv_weights(device_type: str) -> bool:
    """Whether the backend serving device_type declares a prepare_conv_weight hook."""
    return "prepare_conv_weight" in backends.BACKENDS[backend_name(device_type)].hooks


def prepare_conv_weight(weight: torch.Tensor, input_shape: Sequence[int], stride, padding, dilation,
                        groups: int) -> torch.Tensor:
    """The folded weight in the form conv_bias_act runs fastest with on this backend, for inputs of
    input_shape (the backend's prepare_conv_weight hook; the weight itself by default)."""
    hooks = _table(backend_name(weight.device.type))[1]
    return hooks["prepare_conv_weight"](weight, input_shape, stride, padding, dilation, groups)


def train_conv(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """A "materialized" training unit's differentiable convolution on this backend (its train_conv hook)."""
    return _table(backend_name(x.device.type))[1]["train_conv"](x, weight, stride, padding, dilation, groups)


def backend_info() -> Dict[str, object]:
    """Which backend serves each op, per device type, and whether the native extension loaded."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info: Dict[str, object] = {"native_extension": _NATIVE_ERROR or "loaded",
                               "native_cuda_kernels": _native_supports("cuda"),
                               "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    for dev in devices:
        name = backend_name(dev)
        decl = backends.BACKENDS[name]
        info[dev] = {op: name for op in backends.OPS}
        info[f"{dev}_fused_overrides"] = sorted(decl.overrides)
        if decl.engines:
            info[f"{dev}_engines"] = {op: sorted(e) for op, e in decl.engines.items()}
            info[f"{dev}_dispatch_table_entries"] = len(backends.tables.entries_for(torch.device(dev)))
        info[f"{dev}_training"] = decl.training
    info["undispatched"] = "bn_finalize, update_running_stats: resnet_fast.bn_math on every device"
    return info
