"""Native backend: aten's convolution plus the per-channel kernels of resnet_fast._C
(csrc/cpu on CPU, csrc/cuda on CUDA) for statistics, BatchNorm apply and their backward.

Ops not defined here (bn_finalize, update_running_stats: a few per-channel vector ops) are
served by the reference. Outputs keep the input's memory format, as the op contracts say.
"""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ..conventions import conv_backward, memory_format_of, stat_dtype
from .native_cpu import primitives as _C  # torch.ops.resnet_fast_C, float32 NHWC CPU calls vectorized


def _conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups) -> Tensor:
    y = torch.ops.aten.convolution(x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                   groups)
    return y.contiguous(memory_format=memory_format_of(x))


def _prologue(x: Tensor, in_mean: Optional[Tensor], in_scale: Optional[Tensor], in_bias: Optional[Tensor],
              in_relu: bool) -> Tensor:
    if in_scale is None:
        return x
    return _C.bn_act(x, in_mean, in_scale, in_bias, None, None, None, None, in_relu)


def _vec(like: Tensor, value: float) -> Tensor:
    sdt = stat_dtype(like.dtype)
    return torch.full((like.shape[1],), value, dtype=sdt, device=like.device)


def conv_bn_stats(x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    x = x.contiguous(memory_format=memory_format_of(x))
    y = _conv(_prologue(x, in_mean, in_scale, in_bias, in_relu), weight, None, stride, padding, dilation, groups)
    mean, var = _C.channel_stats(y)
    return y, mean, var


def conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    fmt = memory_format_of(y)
    # dL/dy = grad_y + (y - mean)*a + c per channel, a = 2*grad_var/M, c = grad_mean/M.
    count = y.numel() // y.shape[1]
    dy = _C.bn_act(y, mean, grad_var * (2.0 / count), grad_mean / count, grad_y.contiguous(memory_format=fmt),
                   None, None, None, False)
    x = x.contiguous(memory_format=memory_format_of(x))
    z = _prologue(x, in_mean, in_scale, in_bias, in_relu)
    need_z = need_x or need_mean or need_scale or need_bias
    dz, dw = conv_backward(dy, z, weight, stride, padding, dilation, groups, need_z, need_w)
    def empty():
        return x.new_empty(0)  # a fresh one each time: outputs of an op may not alias

    if in_scale is None:
        return [dz, empty(), empty(), empty(), dw]
    dx, dscale, dbias, _, _ = _C.bn_act_backward(dz, z, x, in_mean, in_scale, None, None, None, in_relu,
                                                 [need_x, need_scale, need_bias or need_mean, False, False])
    dmean = -in_scale * dbias if need_mean else empty()
    return [dx, dmean, dscale, dbias if need_bias else empty(), dw]


def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu):
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    residual = residual.contiguous(memory_format=fmt) if residual is not None else None
    return _C.bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu)


def bn_act_backward(grad_out, out, x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu,
                    output_mask: Sequence[bool]) -> List[Tensor]:
    fmt = memory_format_of(x)
    x, out, grad_out = (t.contiguous(memory_format=fmt) for t in (x, out, grad_out))
    residual = residual.contiguous(memory_format=fmt) if residual is not None else None
    need_x, need_mean, need_scale, need_bias, need_res, need_rmean, need_rscale, need_rbias = output_mask
    need_sum = need_mean or need_bias or need_rmean or need_rbias
    dx, dscale, dbias, dres, drscale = _C.bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean,
                                                          res_scale, relu,
                                                          [need_x, need_scale, need_sum, need_res, need_rscale])
    # With s = sum(g): d(bias) = d(res_bias) = s, d(mean) = -scale*s, d(res_mean) = -res_scale*s.
    def empty():
        return x.new_empty(0)

    return [dx, -scale * dbias if need_mean else empty(), dscale, dbias if need_bias else empty(), dres,
            -res_scale * dbias if need_rmean else empty(), drscale, dbias.clone() if need_rbias else empty()]


def _onednn_fusable(x: Tensor, weight: Tensor) -> bool:
    """CPU float32 with oneDNN: conv + bias (+ residual) (+ ReLU) as one oneDNN primitive with post-ops."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and _ONEDNN_POINTWISE is not None)


_ONEDNN_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def conv_bias_act(x, weight, bias, residual, relu, stride, padding, dilation, groups):
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    if _onednn_fusable(x, weight):
        unary = "relu" if relu else "none"
        if residual is None:
            y = _ONEDNN_POINTWISE(x, weight, bias, list(padding), list(stride), list(dilation), groups, unary, [], "")
        else:
            res = residual.contiguous(memory_format=fmt)
            y = _ONEDNN_POINTWISE.binary(x, res, weight, bias, list(padding), list(stride), list(dilation), groups,
                                         "add", 1.0, "relu" if relu else None, [], "")
        return y.contiguous(memory_format=fmt)
    y = _conv(x, weight, None, stride, padding, dilation, groups)
    # bias, residual and ReLU in one pass over y.
    shift = bias.to(stat_dtype(y.dtype)) if bias is not None \
        else _vec(y, 0.0)
    res = residual.contiguous(memory_format=memory_format_of(y)) if residual is not None else None
    return _C.bn_act(y, None, _vec(y, 1.0), shift, res, None, None, None, relu)

def conv_bias_act_backward(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_w, need_b, need_res = output_mask
    fmt = memory_format_of(out)
    grad_out, out = grad_out.contiguous(memory_format=fmt), out.contiguous(memory_format=fmt)
    # One pass: g = grad_out masked by the ReLU, and sum(g) for the bias.
    g, _, db, _, _ = _C.bn_act_backward(grad_out, out, out, None, _vec(out, 1.0), None, None, None, relu,
                                        [True, False, need_b, False, False])
    x = x.contiguous(memory_format=memory_format_of(x))
    dx, dw = conv_backward(g, x, weight, stride, padding, dilation, groups, need_x, need_w)
    db = db.to(bias.dtype) if need_b else x.new_empty(0)
    dres = g.contiguous(memory_format=memory_format_of(residual)) if need_res else x.new_empty(0)
    return [dx, dw, db, dres]
