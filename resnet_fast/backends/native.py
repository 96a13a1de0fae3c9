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
from . import native_gemm
from .native_cpu import _nhwc_float
from .native_cpu import primitives as _C  # torch.ops.resnet_fast_C, float32 NHWC CPU calls vectorized

_LIB = torch.ops.resnet_fast_C
_HAVE_BN_TRAIN = hasattr(_LIB, "nhwc_batch_norm_act")  # an older build of the extension lacks it

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


def _nhwc_float_vec(v) -> bool:
    return v is None or (v.dtype == torch.float32 and v.dim() == 1 and v.is_contiguous())


def _bn_train_kernel(x: Tensor, weight, bias) -> bool:
    """The one-call C++ training BatchNorm serves float32 NHWC CPU activations with float32 affine vectors."""
    return _HAVE_BN_TRAIN and _nhwc_float(x) and _nhwc_float_vec(weight) and _nhwc_float_vec(bias)


def batch_norm_act(P, x, mean, var, weight, bias, residual, eps, relu):
    """Override: the apply pass in one C++ call for float32 NHWC on CPU, else the composite."""
    if not (_bn_train_kernel(x, weight, bias) and _nhwc_float_vec(mean) and _nhwc_float_vec(var)) or (
            residual is not None and not _nhwc_float(residual)):
        return composites.batch_norm_act(P, x, mean, var, weight, bias, residual, eps, relu)
    return _LIB.nhwc_batch_norm_act(x, mean, var, weight, bias, residual, eps, relu)


def batch_norm_act_backward(P, grad_out, out, x, weight, mean, var, eps, relu, output_mask):
    """Override: the two backward passes in one C++ call for float32 NHWC on CPU, else the composite."""
    if _bn_train_kernel(x, weight, None) and grad_out.dtype == torch.float32 and not _nhwc_float(grad_out):
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # e.g. from avgpool's backward
    if not (_bn_train_kernel(x, weight, None) and _nhwc_float(grad_out) and _nhwc_float(out)
            and mean.dtype == torch.float32 and var.dtype == torch.float32):
        return composites.batch_norm_act_backward(P, grad_out, out, x, weight, mean, var, eps, relu, output_mask)
    return _LIB.nhwc_batch_norm_act_backward(grad_out, out, x, weight, mean, var, eps, relu, list(output_mask))


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


def train_conv(P, x, weight, stride, padding, dilation, groups):
    """Hook: a training unit's convolution; small 1x1 convs on CPU as GEMMs (native_gemm), else aten's."""
    return native_gemm.conv2d(x, weight, stride, padding, dilation, groups)
