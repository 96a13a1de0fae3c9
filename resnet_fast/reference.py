"""Plain-PyTorch reference of every resnet_fast op: the ground truth the tests compare against,
and the backend that serves an op where no faster kernel exists.

Conventions shared by all ops (and by every backend):
  * activations are 4-D (N, C, H, W), contiguous or channels_last; outputs keep the input's
    memory format (see `memory_format_of`);
  * per-channel vectors (statistics, scale, shift) are float32, or float64 for float64 activations;
  * a BatchNorm with batch statistics (mean, biased var) and affine (weight, bias) is the per-channel
    affine map y -> y*scale + shift with scale = weight/sqrt(var+eps), shift = bias - mean*scale.
Backward references are the vector-Jacobian products of the forward references (torch.func.vjp),
so they are right by construction.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last when x is laid out NHWC (and not also NCHW-contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of per-channel statistics and scale/shift for activations of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _c(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def channel_stats(y: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of y, in stat_dtype(y.dtype)."""
    var, mean = torch.var_mean(y.to(stat_dtype(y.dtype)), dim=(0, 2, 3), correction=0)
    return mean, var


def scale_shift_act(x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor] = None,
                    res_scale: Optional[Tensor] = None, res_shift: Optional[Tensor] = None,
                    relu: bool = True) -> Tensor:
    """act(x*scale + shift + r), r = residual*res_scale + res_shift ("dual BN"), residual, or 0."""
    out = x.to(scale.dtype) * _c(scale) + _c(shift)
    if residual is not None:
        r = residual.to(scale.dtype)
        out = out + (r * _c(res_scale) + _c(res_shift) if res_scale is not None else r)
    if relu:
        out = torch.relu(out)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
         dilation: Sequence[int], groups: int) -> Tensor:
    y = F.conv2d(x, weight, bias, list(stride), list(padding), list(dilation), groups)
    return y.contiguous(memory_format=memory_format_of(x))


def conv_bn_stats(x: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor], in_relu: bool,
                  weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                  groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """y = conv(prologue(x)), with per-channel mean and biased var of y.

    prologue(x) = act(x*in_scale + in_shift) when in_scale is given (the previous BatchNorm+ReLU,
    applied as the operand is loaded), else x. Zero padding applies to prologue(x), not to x.
    """
    if in_scale is not None:
        x = scale_shift_act(x, in_scale, in_shift, relu=in_relu)
    y = conv(x, weight, None, stride, padding, dilation, groups)
    mean, var = channel_stats(y)
    return y, mean, var


def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> Tuple[Tensor, Tensor]:
    """scale = weight * rsqrt(var + eps), shift = bias - mean * scale (weight=1, bias=0 if not affine)."""
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight.to(var.dtype) if weight is not None else invstd
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(var.dtype)
    return scale, shift


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
    scale, shift = bn_finalize(running_mean.to(torch.float64), running_var.to(torch.float64),
                               None if bn_weight is None else bn_weight.to(torch.float64),
                               None if bn_bias is None else bn_bias.to(torch.float64), eps)
    w = (conv_weight.to(torch.float64) * scale.view(-1, 1, 1, 1)).to(conv_weight.dtype)
    return w, shift.to(conv_weight.dtype)


def conv_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], relu: bool,
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """act(conv(x, weight) + bias [+ residual]): a conv with BN folded in, eval mode."""
    out = conv(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    if relu:
        out = torch.relu(out)
    return out.contiguous(memory_format=memory_format_of(x))


def _vjp(fn, primals: List[Optional[Tensor]], cotangents, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients of fn(*primals) for the primals flagged in output_mask (others: empty tensors)."""
    idx = [i for i, (p, m) in enumerate(zip(primals, output_mask)) if m and p is not None]
    out = [primals[0].new_empty(0) for _ in output_mask]
    if not idx:
        return out

    def partial(*args):
        full = list(primals)
        for i, a in zip(idx, args):
            full[i] = a
        return fn(*full)

    with torch.enable_grad():
        _, vjp_fn = torch.func.vjp(partial, *[primals[i] for i in idx])
        grads = vjp_fn(cotangents)
    for i, g in zip(idx, grads):
        out[i] = g.contiguous(memory_format=memory_format_of(primals[i]))
    return out


def conv_bn_stats_backward(grad_y: Tensor, grad_mean: Tensor, grad_var: Tensor, x: Tensor,
                           in_scale: Optional[Tensor], in_shift: Optional[Tensor], in_relu: bool, weight: Tensor,
                           y: Tensor, mean: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, in_scale, in_shift, weight) of conv_bn_stats (y and mean are recomputed)."""
    def fn(x_, s_, t_, w_):
        return conv_bn_stats(x_, s_, t_, in_relu, w_, stride, padding, dilation, groups)

    return _vjp(fn, [x, in_scale, in_shift, weight], (grad_y, grad_mean, grad_var), output_mask)


def scale_shift_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
                             res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool,
                             output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, scale, shift, residual, res_scale, res_shift) of scale_shift_act."""
    def fn(x_, s_, t_, r_, rs_, rt_):
        return scale_shift_act(x_, s_, t_, r_, rs_, rt_, relu)

    return _vjp(fn, [x, scale, shift, residual, res_scale, res_shift], grad_out, output_mask)


def conv_bias_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                           residual: Optional[Tensor], relu: bool, stride: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], groups: int, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, weight, bias, residual) of conv_bias_act."""
    def fn(x_, w_, b_, r_):
        return conv_bias_act(x_, w_, b_, r_, relu, stride, padding, dilation, groups)

    return _vjp(fn, [x, weight, bias, residual], grad_out, output_mask)
