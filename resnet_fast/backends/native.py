"""Native backend: aten's convolution plus the per-channel kernels of resnet_fast._C
(csrc/cpu on CPU, csrc/cuda on CUDA) for statistics, BatchNorm apply and their backward.

Ops not defined here (bn_finalize, update_running_stats: a few per-channel vector ops) are
served by the reference. Outputs keep the input's memory format, as the op contracts say.
"""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

_C = torch.ops.resnet_fast_C


def _fmt(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups) -> Tensor:
    y = torch.ops.aten.convolution(x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                   groups)
    return y.contiguous(memory_format=_fmt(x))


def _conv_backward(dy: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups, need_x: bool,
                   need_w: bool):
    dx, dw, _ = torch.ops.aten.convolution_backward(dy, x, weight, None, list(stride), list(padding),
                                                    list(dilation), False, [0, 0], groups, [need_x, need_w, False])
    dx = dx.contiguous(memory_format=_fmt(x)) if need_x else x.new_empty(0)
    dw = dw.contiguous(memory_format=_fmt(weight)) if need_w else x.new_empty(0)
    return dx, dw


def _prologue(x: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor], in_relu: bool) -> Tensor:
    if in_scale is None:
        return x
    return _C.scale_shift_act(x, in_scale, in_shift, None, None, None, in_relu)


def conv_bn_stats(x, in_scale, in_shift, in_relu, weight, stride, padding, dilation, groups):
    x = x.contiguous(memory_format=_fmt(x))
    y = _conv(_prologue(x, in_scale, in_shift, in_relu), weight, None, stride, padding, dilation, groups)
    mean, var = _C.channel_stats(y)
    return y, mean, var


def conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_scale, in_shift, in_relu, weight, y, mean, stride,
                           padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_scale, need_shift, need_w = output_mask
    fmt = _fmt(y)
    # dL/dy = grad_y + y*a + c per channel, a = 2*grad_var/M, c = grad_mean/M - a*mean.
    count = y.numel() // y.shape[1]
    a = grad_var * (2.0 / count)
    c = grad_mean / count - a * mean
    dy = _C.scale_shift_act(y, a, c, grad_y.contiguous(memory_format=fmt), None, None, False)
    x = x.contiguous(memory_format=_fmt(x))
    z = _prologue(x, in_scale, in_shift, in_relu)
    need_z = need_x or need_scale or need_shift
    dz, dw = _conv_backward(dy, z, weight, stride, padding, dilation, groups, need_z, need_w)
    if in_scale is None:
        return [dz, x.new_empty(0), x.new_empty(0), dw]
    dx, dscale, dshift, _, _ = _C.scale_shift_act_backward(dz, z, x, in_scale, None, None, in_relu,
                                                           [need_x, need_scale, need_shift, False, False])
    return [dx, dscale, dshift, dw]


def scale_shift_act(x, scale, shift, residual, res_scale, res_shift, relu):
    fmt = _fmt(x)
    x = x.contiguous(memory_format=fmt)
    residual = residual.contiguous(memory_format=fmt) if residual is not None else None
    return _C.scale_shift_act(x, scale, shift, residual, res_scale, res_shift, relu)


def scale_shift_act_backward(grad_out, out, x, scale, shift, residual, res_scale, res_shift, relu,
                             output_mask: Sequence[bool]) -> List[Tensor]:
    fmt = _fmt(x)
    x, out, grad_out = (t.contiguous(memory_format=fmt) for t in (x, out, grad_out))
    residual = residual.contiguous(memory_format=fmt) if residual is not None else None
    need_x, need_scale, need_shift, need_res, need_rscale, need_rshift = output_mask
    dx, dscale, dshift, dres, drscale = _C.scale_shift_act_backward(
        grad_out, out, x, scale, residual, res_scale, relu,
        [need_x, need_scale, need_shift or need_rshift, need_res, need_rscale])
    # d(res_shift) = sum(g) = d(shift)
    drshift = dshift.clone() if need_rshift else x.new_empty(0)
    if not need_shift:
        dshift = x.new_empty(0)
    return [dx, dscale, dshift, dres, drscale, drshift]


def conv_bias_act(x, weight, bias, residual, relu, stride, padding, dilation, groups):
    fmt = _fmt(x)
    x = x.contiguous(memory_format=fmt)
    y = _conv(x, weight, None, stride, padding, dilation, groups)
    # bias, residual and ReLU in one pass over y.
    sdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    ones = torch.ones(y.shape[1], dtype=sdt, device=y.device)
    shift = bias.to(sdt) if bias is not None else torch.zeros_like(ones)
    res = residual.contiguous(memory_format=_fmt(y)) if residual is not None else None
    return _C.scale_shift_act(y, ones, shift, res, None, None, relu)


def conv_bias_act_backward(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_w, need_b, need_res = output_mask
    fmt = _fmt(out)
    grad_out, out = grad_out.contiguous(memory_format=fmt), out.contiguous(memory_format=fmt)
    if relu:
        g = torch.where(out > 0, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device))
    else:
        g = grad_out
    x = x.contiguous(memory_format=_fmt(x))
    dx, dw = _conv_backward(g, x, weight, stride, padding, dilation, groups, need_x, need_w)
    db = g.sum(dim=(0, 2, 3), dtype=torch.float64 if g.dtype == torch.float64 else torch.float32).to(bias.dtype) \
        if need_b else x.new_empty(0)
    dres = g.contiguous(memory_format=_fmt(residual)) if need_res else x.new_empty(0)
    return [dx, dw, db, dres]
