"""The native backend's CPU primitives: float32 channels_last activations (how resnet_fast models
train on CPU) go to the vectorized kernels of csrc/cpu/nhwc_float_cpu.cpp, everything else to the
general kernels of csrc/cpu/bn_act_cpu.cpp (and, on CUDA, csrc/cuda).

`primitives` has the interface of torch.ops.resnet_fast_C (channel_stats, bn_act, bn_act_backward,
same arguments and results), so the native backend's op functions call it in place of the library.
Why the split: the general kernels do their per-element math in double for every dtype and layout,
which the compiler cannot vectorize; resnet50's CPU training step spent more time in them than
eager PyTorch spends in BatchNorm + ReLU. The float32 NHWC kernels vectorize the channel loop
(AVX2 + FMA where the CPU has it) and sum in float over blocks of rows, in double across blocks.
"""

import torch
from torch import Tensor

_LIB = torch.ops.resnet_fast_C
_HAVE_NHWC = hasattr(_LIB, "nhwc_bn_act")  # an older build of the extension lacks them


def _nhwc_float(x: Tensor) -> bool:
    """float32 channels_last (and not also NCHW-contiguous) on CPU: what the vectorized kernels take."""
    return (_HAVE_NHWC and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


class _Primitives:
    """torch.ops.resnet_fast_C's interface, routing float32 NHWC CPU calls to the vectorized kernels."""

    @staticmethod
    def channel_stats(y: Tensor):
        return (_LIB.nhwc_channel_stats if _nhwc_float(y) else _LIB.channel_stats)(y)

    @staticmethod
    def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu):
        fn = _LIB.nhwc_bn_act if _nhwc_float(x) else _LIB.bn_act
        return fn(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu)

    @staticmethod
    def bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, output_mask):
        fn = _LIB.nhwc_bn_act_backward if _nhwc_float(x) else _LIB.bn_act_backward
        return fn(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, output_mask)


primitives = _Primitives()
