"""Each dispatched op of torch.ops.resnet_fast written once, over a backend's primitives `P`
(resnet_fast/backends/__init__.py has the contract). Every backend runs these unless it declares an
override that fuses more.

Layout: inputs are brought into the backend's working layout `P.layout(x)` (a no-op when they are
already in it) and results go back to the op's contract, the input's memory format. Gradients that
are not requested are empty tensors (an op's outputs must not alias its inputs or each other).
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import bn_math
from .conventions import memory_format_of, stat_dtype


def _in(P, t: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    return None if t is None else t.contiguous(memory_format=P.layout(like))


def _out(t: Tensor, like: Tensor) -> Tensor:
    return t.contiguous(memory_format=memory_format_of(like))


def _prologue(P, xs: Tensor, in_mean, in_scale, in_bias, in_relu: bool) -> Tensor:
    """z = act((x - in_mean)*in_scale + in_bias), the previous BatchNorm + ReLU, or x itself."""
    if in_scale is None:
        return xs
    return P.bn_act(xs, in_mean, in_scale, in_bias, None, None, None, None, in_relu)


def conv_bn_stats(P, x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    """y = conv(prologue(x)), then y's per-channel mean and biased variance."""
    xs = _in(P, x, x)
    z = _prologue(P, xs, in_mean, in_scale, in_bias, in_relu)
    y = _in(P, P.conv(z, weight, None, stride, padding, dilation, groups), z)
    mean, var = P.channel_stats(y)
    return _out(y, x), mean, var


def conv_bn_stats_backward(P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, in_mean, in_scale, in_bias, weight) of conv_bn_stats.

    Chain rule through the statistics, M = N*H*W of y: dL/dy = grad_y + (y - mean)*2 grad_var/M + grad_mean/M
    (one bn_act pass with grad_y as its residual); aten dgrad / wgrad to z = prologue(x), recomputed from
    the saved x (never stored); then the prologue's backward: dx = g*in_scale, d in_scale = Σg·(x - in_mean),
    d in_bias = Σg, d in_mean = -in_scale·Σg, with g = dz masked by z > 0 when in_relu."""
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    count = y.numel() // y.shape[1]
    ys = _in(P, y, y)
    dy = P.bn_act(ys, mean, grad_var * (2.0 / count), grad_mean / count, _in(P, grad_y, y), None, None, None, False)
    xs = _in(P, x, x)
    z = _prologue(P, xs, in_mean, in_scale, in_bias, in_relu)
    need_z = need_x or need_mean or need_scale or need_bias
    dz, dw = P.conv_backward(dy, z, weight, stride, padding, dilation, groups, need_z, need_w)

    def empty():
        return x.new_empty(0)

    if in_scale is None:
        return [_out(dz, x) if need_x else empty(), empty(), empty(), empty(), dw]
    dx, _, total, xsum, _ = P.bn_act_backward(_in(P, dz, z), z, xs, in_mean, in_scale, None, None, None, in_relu,
                                              [need_x, False, need_bias or need_mean, need_scale, False])
    return [_out(dx, x) if need_x else empty(), -in_scale * total if need_mean else empty(),
            xsum if need_scale else empty(), total if need_bias else empty(), dw]


def bn_act(P, x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu):
    """act((x - mean)*scale + bias + r): the primitive itself, in the backend's layout."""
    out = P.bn_act(_in(P, x, x), mean, scale, bias, _in(P, residual, x), res_mean, res_scale, res_bias, relu)
    return _out(out, x)


def bn_act_backward(P, grad_out, out, x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu,
                    output_mask: Sequence[bool]) -> List[Tensor]:
    """The 8 gradients (x, mean, scale, bias, residual, res_mean, res_scale, res_bias) of bn_act from the
    primitive's five: with s = Σg, d bias = d res_bias = s, d mean = -scale·s, d res_mean = -res_scale·s,
    d scale = Σg·(x - mean), d res_scale = Σg·(residual - res_mean)."""
    need_x, need_mean, need_scale, need_bias, need_res, need_rmean, need_rscale, need_rbias = output_mask
    dual = res_scale is not None
    need_sum = need_mean or need_bias or need_rmean or need_rbias
    dx, dres, total, xsum, rsum = P.bn_act_backward(
        _in(P, grad_out, x), _in(P, out, x), _in(P, x, x), mean, scale, _in(P, residual, x), res_mean, res_scale,
        relu, [need_x, need_res, need_sum, need_scale, need_rscale and dual])

    def empty():
        return x.new_empty(0)

    return [_out(dx, x) if need_x else empty(),
            -scale * total if need_mean and mean is not None else empty(),
            xsum if need_scale else empty(),
            total.clone() if need_bias else empty(),
            _out(dres, residual) if need_res else empty(),
            -res_scale * total if need_rmean and res_mean is not None else empty(),
            rsum if need_rscale and dual else empty(),
            total.clone() if need_rbias and res_bias is not None else empty()]


def batch_stats(P, x):
    """x's per-channel mean and biased variance: the primitive, in the backend's layout."""
    return P.channel_stats(_in(P, x, x))


def batch_norm_act(P, x, mean, var, weight, bias, residual, eps, relu):
    """Training BatchNorm (+ residual) (+ ReLU) over given batch statistics, written once: one bn_act pass."""
    scale = bn_math.finalize(var, weight, eps)
    shift = bias.to(scale.dtype) if bias is not None else torch.zeros_like(scale)
    out = P.bn_act(_in(P, x, x), mean, scale, shift, _in(P, residual, x), None, None, None, relu)
    return _out(out, x)


def batch_norm_act_backward(P, grad_out, out, x, weight, mean, var, eps, relu,
                            output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, weight, bias, residual) of batch_norm_act in two passes: g = grad_out masked by out > 0,
    Σg and Σg·(x - mean) (bn_act_backward with scale 1, which also writes g), then
    dx = s*g + (x - mean)*k + c with s = w*invstd, k = -s*invstd²*Σg·(x - mean)/M, c = -s*Σg/M (one bn_act,
    g as its scaled residual); d weight = Σg·(x - mean)*invstd, d bias = Σg, d residual = g."""
    need_x, need_w, need_b, need_res = output_mask
    xs = _in(P, x, x)
    ones = torch.ones_like(mean)
    g, _, total, xsum, _ = P.bn_act_backward(_in(P, grad_out, x), _in(P, out, x), xs, mean, ones, None, None, None,
                                             relu, [True, False, True, True, False])
    invstd = torch.rsqrt(var + eps)

    def empty():
        return x.new_empty(0)

    dx = empty()
    if need_x:
        count = x.numel() // x.shape[1]
        s = bn_math.finalize(var, weight, eps)
        k = -s * invstd * invstd * xsum / count
        c = -s * total / count
        dx = _out(P.bn_act(xs, mean, k, c, g, None, s, torch.zeros_like(s), False), x)
    return [dx,
            (xsum * invstd).to(weight.dtype) if need_w else empty(),
            total.to(weight.dtype if weight is not None else total.dtype) if need_b else empty(),
            _out(g, x) if need_res else empty()]


def conv_bias_act(P, x, weight, bias, residual, relu, stride, padding, dilation, groups):
    """act(conv(x, weight) + bias [+ residual]): the conv, then one bn_act pass (scale 1) adding the bias in
    the stat dtype, the residual and the ReLU; a bare conv + bias in x's dtype needs no pass."""
    xs = _in(P, x, x)
    if residual is None and not relu and (bias is None or bias.dtype == x.dtype):
        return _out(P.conv(xs, weight, bias, stride, padding, dilation, groups), x)
    y = _in(P, P.conv(xs, weight, None, stride, padding, dilation, groups), xs)
    sdt = stat_dtype(y.dtype)
    shift = bias.to(sdt) if bias is not None else y.new_zeros(y.shape[1], dtype=sdt)
    out = P.bn_act(y, None, torch.ones_like(shift), shift, _in(P, residual, y), None, None, None, relu)
    return _out(out, x)


def conv_bias_act_backward(P, grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    """Gradients (x, weight, bias, residual): g = grad_out masked by out > 0 (relu) and Σg in one pass
    (bn_act_backward with scale 1), then aten dgrad / wgrad of g; d bias = Σg, d residual = g."""
    need_x, need_w, need_b, need_res = output_mask
    outs = _in(P, out, out)
    ones = torch.ones(out.shape[1], dtype=stat_dtype(out.dtype), device=out.device)
    g, _, db, _, _ = P.bn_act_backward(_in(P, grad_out, out), outs, outs, None, ones, None, None, None, relu,
                                       [True, False, need_b, False, False])
    dx, dw = P.conv_backward(g, _in(P, x, x), weight, stride, padding, dilation, groups, need_x, need_w)
    return [_out(dx, x) if need_x else x.new_empty(0), dw,
            db.to(bias.dtype) if need_b else x.new_empty(0),
            _out(g, residual) if need_res else x.new_empty(0)]


def prepare_conv_weight(P, weight, input_shape, stride, padding, dilation, groups):
    """Default hook: conv_bias_act takes the folded weight as it is."""
    return weight


def train_conv(P, x, weight, stride, padding, dilation, groups):
    """Default hook: aten's differentiable convolution."""
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)
