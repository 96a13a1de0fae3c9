"""Native backend: aten's convolution plus the per-channel kernels of resnet_fast._C (csrc/cpu on CPU,
csrc/cuda on CUDA) for statistics, BatchNorm apply and its backward; on CPU float32 with oneDNN the
eval conv_bias_act runs as one oneDNN convolution with bias / residual / ReLU post-ops.

Primitives take every activation of one call in one memory format, the input's (NCHW or NHWC), which
is what the C++ kernels require; the composites bring them there.
"""

from typing import Sequence

import torch
from torch import Tensor

from .. import composites
from ..conventions import aten_conv as conv  # noqa: F401  (primitive)
from ..conventions import conv_backward  # noqa: F401  (primitive)
from ..conventions import memory_format_of

_C = torch.ops.resnet_fast_C
_ONEDNN_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
_ONEDNN_REORDER = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)


def channel_stats(y: Tensor):
    return _C.channel_stats(y)


def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu) -> Tensor:
    return _C.bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu)


def bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, mask: Sequence[bool]):
    # The C++ kernel's results and mask are ordered (dx, Σg·(x - mean), Σg, dres, Σg·(residual - res_mean)).
    need_dx, need_dres, need_sum, need_xsum, need_rsum = mask
    dx, xsum, total, dres, rsum = _C.bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale,
                                                     relu, [need_dx, need_xsum, need_sum, need_dres, need_rsum])
    return (dx if need_dx else None, dres if need_dres else None, total if need_sum else None,
            xsum if need_xsum else None, rsum if need_rsum else None)


def _onednn_fusable(x: Tensor, weight: Tensor) -> bool:
    """CPU float32 with oneDNN: conv + bias (+ residual) (+ ReLU) as one oneDNN primitive with post-ops."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and _ONEDNN_POINTWISE is not None)


def conv_bias_act(P, x, weight, bias, residual, relu, stride, padding, dilation, groups):
    """Override: oneDNN's fused convolution where it applies, else the composite (conv + one C++ pass)."""
    if not _onednn_fusable(x, weight):
        return composites.conv_bias_act(P, x, weight, bias, residual, relu, stride, padding, dilation, groups)
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    if residual is None:
        y = _ONEDNN_POINTWISE(x, weight, bias, list(padding), list(stride), list(dilation), groups,
                              "relu" if relu else "none", [], "")
    else:
        y = _ONEDNN_POINTWISE.binary(x, residual.contiguous(memory_format=fmt), weight, bias, list(padding),
                                     list(stride), list(dilation), groups, "add", 1.0, "relu" if relu else None, [],
                                     "")
    return y.contiguous(memory_format=fmt)


def prepare_conv_weight(P, weight, input_shape, stride, padding, dilation, groups):
    """Hook: a float32 CPU weight reordered once into oneDNN's blocked layout for inputs of input_shape
    (as Inductor's CPU freezing does; a layout hint, valid for any shape), so oneDNN does not redo it per call."""
    if _ONEDNN_REORDER is None or weight.device.type != "cpu" or weight.dtype != torch.float32 \
            or not torch.backends.mkldnn.is_available():
        return weight
    return _ONEDNN_REORDER(weight.contiguous(), list(padding), list(stride), list(dilation), groups,
                           list(input_shape))
