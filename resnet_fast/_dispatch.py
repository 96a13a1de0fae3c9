"""The one place that decides which backend serves each resnet_fast op on each device.

Backends (each a module with functions named after the ops it implements):
  reference  resnet_fast/reference.py: plain PyTorch, every op, every device;
  native     resnet_fast/backends/native.py: the C++ (CPU) / CUDA C++ kernels of resnet_fast._C for
             the memory-bound parts, aten for the convolution itself;
  triton     resnet_fast/backends/triton: Triton kernels (implicit-GEMM conv with the BN prologue and
             statistics / bias-residual-ReLU epilogues, BN apply and backward passes).
An op a backend does not implement falls back to the reference.

Choice, per device type, made on first use unless RESNET_FAST_BACKEND overrides it:
  cpu   native when resnet_fast._C loaded, else reference (triton only when asked for and
        TRITON_INTERPRET=1: the interpreter, for tests);
  cuda  triton when triton imports and the GPU is sm_80 or newer, else reference. The CUDA C++
        kernels (native) compile in CI but have not yet run on a GPU: they serve only when asked for.
  other reference.
RESNET_FAST_BACKEND=reference|native|triton|auto (default auto).
"""

import os
import warnings
from typing import Callable, Dict

import torch

from . import reference

try:
    from . import _C  # noqa: F401  (registers torch.ops.resnet_fast_C)

    _NATIVE_ERROR = None
except ImportError as e:  # built with RESNET_FAST_SKIP_BUILD=1, or not built at all
    _NATIVE_ERROR = f"{type(e).__name__}: {e}"

_BACKENDS = ("reference", "native", "triton")


def _triton_supports(device_type: str) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device_type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def _native_supports(device_type: str) -> bool:
    if _NATIVE_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast_C::channel_stats",
                                                          "CPU" if device_type == "cpu" else "CUDA")


def _choose(device_type: str) -> str:
    wanted = os.environ.get("RESNET_FAST_BACKEND", "auto").lower()
    if wanted not in (*_BACKENDS, "auto"):
        raise ValueError(f"RESNET_FAST_BACKEND must be one of auto, {', '.join(_BACKENDS)}; got {wanted!r}")
    if wanted == "reference":
        return "reference"
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


_chosen: Dict[str, str] = {}


def backend_name(device_type: str) -> str:
    if device_type not in _chosen:
        _chosen[device_type] = _choose(device_type)
    return _chosen[device_type]


def _module(name: str):
    if name == "native":
        from .backends import native

        return native
    if name == "triton":
        from .backends import triton

        return triton
    return reference


def kernel(op: str, like: torch.Tensor) -> Callable:
    """The implementation of `op` for tensors on like.device."""
    impl = getattr(_module(backend_name(like.device.type)), op, None)
    return impl if impl is not None else getattr(reference, op)


def backend_info() -> Dict[str, object]:
    """Which backend serves each op, per device type, and whether the native extension loaded."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ops = ["conv_bn_stats", "conv_bn_stats_backward", "bn_finalize", "update_running_stats", "bn_act",
           "bn_act_backward", "conv_bias_act", "conv_bias_act_backward"]
    info: Dict[str, object] = {"native_extension": _NATIVE_ERROR or "loaded",
                               "native_cuda_kernels": _native_supports("cuda"),
                               "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    for dev in devices:
        name = backend_name(dev)
        mod = _module(name)
        info[dev] = {op: (name if hasattr(mod, op) else "reference") for op in ops}
    return info
