"""Plain-PyTorch oracle of every resnet_fast op: the ground truth the tests compare every backend
against (in float64, and in the same dtype as "eager"). No op of the package runs these functions;
the plain-PyTorch *backend* is resnet_fast/backends/eager.py.

Forward references are the ops' definitions written as directly as possible. Backward references are
not written by hand: each is torch.autograd's vector-Jacobian product of the forward reference, so it
is right by construction (the ReLU's gradient at exactly 0 is 0, as autograd's).

Conventions every op follows (resnet_fast/conventions.py): activations 4-D (N, C, H, W), contiguous or
channels_last, outputs in the input's memory format; per-channel vectors in float32 (float64 for
float64 activations); BatchNorm applied in centred form (y - mean)*scale + bias with
scale = weight/sqrt(var + eps), which, unlike y*scale + (bias - mean*scale), does not cancel when
|mean| >> std.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .conventions import memory_format_of, stat_dtype


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
    root = torch.sqrt(var + eps)
    return (weight.to(var.dtype) if weight is not None else torch.ones_like(var)) / root


def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                         mean: Tensor, var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's documented update, in place: num_batches_tracked += 1;
    running <- running + f*(batch - running), f = momentum or 1/num_batches_tracked; unbiased variance."""
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked += 1
        f = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
        running_mean += f * (mean.to(running_mean.dtype) - running_mean)
        running_var += f * ((var * count / (count - 1)).to(running_var.dtype) - running_var)


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


# ---------------------------------------------------------------------------------------------
# Backward references: autograd through the forward references above.

def _vjp(forward, inputs: Sequence[Optional[Tensor]], grads: Sequence[Optional[Tensor]],
         output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients of forward(*inputs) against `grads` for the inputs output_mask asks for, laid out like
    the inputs; an empty tensor for the others (and for a requested input that is None)."""
    leaves = [t.detach().requires_grad_(bool(m)) if t is not None else None for t, m in zip(inputs, output_mask)]
    with torch.enable_grad():
        outs = forward(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                   if wanted else ())
    like = next(t for t in inputs if t is not None)
    result = []
    for t in leaves:
        if t is None or not t.requires_grad:
            result.append(like.new_empty(0))
            continue
        g = next(got)
        g = torch.zeros_like(t) if g is None else g
        result.append(g.contiguous(memory_format=memory_format_of(t)) if g.dim() == 4 else g)
    return result


def bn_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor,
                    residual: Optional[Tensor], res_mean: Optional[Tensor], res_scale: Optional[Tensor],
                    res_bias: Optional[Tensor], relu: bool, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, mean, scale, bias, residual, res_mean, res_scale, res_bias) of bn_act."""
    return _vjp(lambda *a: bn_act(*a, relu=relu), [x, mean, scale, bias, residual, res_mean, res_scale, res_bias],
                [grad_out], output_mask)


def conv_bn_stats_backward(grad_y: Tensor, grad_mean: Tensor, grad_var: Tensor, x: Tensor,
                           in_mean: Optional[Tensor], in_scale: Optional[Tensor], in_bias: Optional[Tensor],
                           in_relu: bool, weight: Tensor, y: Tensor, mean: Tensor, stride: Sequence[int],
                           padding: Sequence[int], dilation: Sequence[int], groups: int,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, in_mean, in_scale, in_bias, weight) of conv_bn_stats (y, mean are recomputed)."""
    def forward(x_, m_, s_, b_, w_):
        return conv_bn_stats(x_, m_, s_, b_, in_relu, w_, stride, padding, dilation, groups)

    return _vjp(forward, [x, in_mean, in_scale, in_bias, weight], [grad_y, grad_mean, grad_var], output_mask)


def conv_bias_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                           residual: Optional[Tensor], relu: bool, stride: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], groups: int, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, weight, bias, residual) of conv_bias_act."""
    def forward(x_, w_, b_, r_):
        return conv_bias_act(x_, w_, b_, r_, relu, stride, padding, dilation, groups)

    return _vjp(forward, [x, weight, bias, residual], [grad_out], output_mask)
