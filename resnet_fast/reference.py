"""Plain-PyTorch reference of every resnet_fast op: the ground truth the tests compare against,
and the backend that serves an op where no faster kernel exists.

Conventions shared by all ops (and by every backend):
  * activations are 4-D (N, C, H, W), contiguous or channels_last; outputs keep the input's
    memory format (see `memory_format_of`);
  * per-channel vectors (statistics, scale, shift) are float32, or float64 for float64 activations;
  * a BatchNorm with batch statistics (mean, biased var) and affine (weight, bias) is applied in
    centered form, y -> (y - mean)*scale + bias with scale = weight/sqrt(var+eps) (bn_finalize):
    unlike y*scale + (bias - mean*scale) it does not cancel when |mean| >> std, in forward or backward.
Backward references are the vector-Jacobian products of the forward references (torch.func.vjp),
so they are right by construction.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .conventions import conv_backward, memory_format_of, stat_dtype  # noqa: F401  (part of this module's API)


def _c(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def channel_stats(y: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of y, in stat_dtype(y.dtype)."""
    var, mean = torch.var_mean(y.to(stat_dtype(y.dtype)), dim=(0, 2, 3), correction=0)
    return mean, var


def bn_act(x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor, residual: Optional[Tensor] = None,
           res_mean: Optional[Tensor] = None, res_scale: Optional[Tensor] = None, res_bias: Optional[Tensor] = None,
           relu: bool = True) -> Tensor:
    """act((x - mean)*scale + bias + r) with r = (residual - res_mean)*res_scale + res_bias ("dual BN"),
    residual, or 0. A mean of None is 0."""
    xf = x.to(scale.dtype)
    out = (xf - _c(mean) if mean is not None else xf) * _c(scale) + _c(bias)
    if residual is not None:
        r = residual.to(scale.dtype)
        if res_scale is not None:
            r = (r - _c(res_mean) if res_mean is not None else r) * _c(res_scale) + _c(res_bias)
        out = out + r
    if relu:
        out = torch.relu(out)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
         dilation: Sequence[int], groups: int) -> Tensor:
    y = F.conv2d(x, weight, bias, list(stride), list(padding), list(dilation), groups)
    return y.contiguous(memory_format=memory_format_of(x))


def conv_bn_stats(x: Tensor, in_mean: Optional[Tensor], in_scale: Optional[Tensor], in_bias: Optional[Tensor],
                  in_relu: bool, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """y = conv(prologue(x)), with per-channel mean and biased var of y.

    prologue(x) = act((x - in_mean)*in_scale + in_bias) when in_scale is given (the previous
    BatchNorm+ReLU, applied as the operand is loaded), else x. Zero padding applies to prologue(x)."""
    if in_scale is not None:
        x = bn_act(x, in_mean, in_scale, in_bias, relu=in_relu)
    y = conv(x, weight, None, stride, padding, dilation, groups)
    mean, var = channel_stats(y)
    return y, mean, var


def bn_finalize(var: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """scale = weight / sqrt(var + eps) (weight 1 when the BatchNorm is not affine)."""
    invstd = torch.rsqrt(var + eps)
    return invstd * weight.to(var.dtype) if weight is not None else invstd


def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                         mean: Tensor, var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's training-mode update, in place: num_batches_tracked += 1, then
    running = (1 - f) * running + f * batch with f = momentum, or 1/num_batches_tracked when
    momentum is None (cumulative average); the variance stored is the unbiased one."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is None:
        if num_batches_tracked is None:
            raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
        factor = 1.0 / num_batches_tracked.to(torch.float64)
    else:
        factor = momentum
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        running_mean.copy_(running_mean * (1 - factor) + mean.to(running_mean.dtype) * factor)
        running_var.copy_(running_var * (1 - factor) + unbiased.to(running_var.dtype) * factor)


def fold_bn(conv_weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Tensor,
            running_var: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm folded into the preceding conv (computed in float64, returned in the
    conv weight's dtype): W' = W * gamma/sqrt(rv + eps) per output channel, b' = beta - rm * that."""
    f64 = torch.float64
    scale = bn_finalize(running_var.to(f64), None if bn_weight is None else bn_weight.to(f64), eps)
    shift = -running_mean.to(f64) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(f64)
    w = (conv_weight.to(f64) * scale.view(-1, 1, 1, 1)).to(conv_weight.dtype)
    return w, shift.to(conv_weight.dtype)


def conv_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], relu: bool,
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """act(conv(x, weight) + bias [+ residual]): a conv with BN folded in, eval mode. A bias in a wider
    dtype than x (float32 for bf16/fp16 x) is added in that precision, then rounded once."""
    if bias is None or bias.dtype == x.dtype:
        out = conv(x, weight, bias, stride, padding, dilation, groups)
    else:
        out = conv(x, weight, None, stride, padding, dilation, groups)
        out = (out.to(bias.dtype) + _c(bias)).to(x.dtype).contiguous(memory_format=memory_format_of(x))
    if residual is not None:
        out = out + residual
    if relu:
        out = torch.relu(out)
    return out.contiguous(memory_format=memory_format_of(x))


def _sum(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.sum(dim=(0, 2, 3), dtype=dtype)


def bn_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor,
                    residual: Optional[Tensor], res_mean: Optional[Tensor], res_scale: Optional[Tensor],
                    res_bias: Optional[Tensor], relu: bool, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, mean, scale, bias, residual, res_mean, res_scale, res_bias) of bn_act, given its output:
    g = grad_out * (out > 0 when relu); dx = g*scale; dscale = sum g*(x - mean); dbias = sum g;
    dmean = -scale * sum g; the residual's likewise with res_scale (or g itself without it)."""
    sdt = scale.dtype
    g = grad_out.to(sdt)
    if relu:
        g = torch.where(out > 0, g, torch.zeros((), dtype=sdt, device=g.device))
    total = _sum(g, sdt)
    fmt = memory_format_of(x)

    def centered(t, m):
        t = t.to(sdt)
        return t - _c(m) if m is not None else t

    def empty():
        return x.new_empty(0)

    want = list(output_mask)
    dres = None
    if want[4]:
        dres = (g * _c(res_scale) if res_scale is not None else g).to(x.dtype).contiguous(memory_format=fmt)
        if dres is grad_out:
            dres = dres.clone()  # an op's output may not alias its input
    return [
        (g * _c(scale)).to(x.dtype).contiguous(memory_format=fmt) if want[0] else empty(),
        -scale * total if want[1] and mean is not None else empty(),
        _sum(g * centered(x, mean), sdt) if want[2] else empty(),
        total.clone() if want[3] else empty(),
        dres if want[4] else empty(),
        -res_scale * total if want[5] and res_mean is not None else empty(),
        _sum(g * centered(residual, res_mean), sdt) if want[6] and res_scale is not None else empty(),
        total.clone() if want[7] and res_bias is not None else empty(),
    ]


def conv_bn_stats_backward(grad_y: Tensor, grad_mean: Tensor, grad_var: Tensor, x: Tensor,
                           in_mean: Optional[Tensor], in_scale: Optional[Tensor], in_bias: Optional[Tensor],
                           in_relu: bool, weight: Tensor, y: Tensor, mean: Tensor, stride: Sequence[int],
                           padding: Sequence[int], dilation: Sequence[int], groups: int,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, in_mean, in_scale, in_bias, weight) of conv_bn_stats:
    dL/dy = grad_y + (y - mean) * 2 grad_var/M + grad_mean/M (M = N*H*W), conv backward to the
    prologue's output z (recomputed from x), then the prologue's bn_act backward."""
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    count = y.numel() // y.shape[1]
    dy = bn_act(y, mean, grad_var * (2.0 / count), grad_mean / count, grad_y, relu=False)
    z = bn_act(x, in_mean, in_scale, in_bias, relu=in_relu) if in_scale is not None else x
    need_z = need_x or need_mean or need_scale or need_bias
    dz, dw = conv_backward(dy, z, weight, stride, padding, dilation, groups, need_z, need_w)
    if in_scale is None:
        return [dz, x.new_empty(0), x.new_empty(0), x.new_empty(0), dw]
    dx, dmean, dscale, dbias = bn_act_backward(dz, z, x, in_mean, in_scale, in_bias, None, None, None, None, in_relu,
                                               [need_x, need_mean, need_scale, need_bias] + [False] * 4)[:4]
    return [dx, dmean, dscale, dbias, dw]


def conv_bias_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                           residual: Optional[Tensor], relu: bool, stride: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], groups: int, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, weight, bias, residual) of conv_bias_act, given its output."""
    need_x, need_w, need_b, need_res = output_mask
    g = torch.where(out > 0, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device)) \
        if relu else grad_out
    dx, dw = conv_backward(g, x, weight, stride, padding, dilation, groups, need_x, need_w)
    db = _sum(g, stat_dtype(g.dtype)).to(bias.dtype) if need_b else x.new_empty(0)
    dres = (g.clone() if g is grad_out else g).contiguous(memory_format=memory_format_of(residual)) \
        if need_res else x.new_empty(0)
    return [dx, dw, db, dres]
