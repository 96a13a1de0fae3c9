"""Every op of torch.ops.resnet_fast: schema, input checks, fake kernel and autograd, in one file.

The op set follows the fusion plan (shared DESIGN.md): a conv -> BatchNorm -> ReLU unit in
training mode is
    y, mean, var = conv_bn_stats(x, prev_scale, prev_shift, prev_relu, W)   # conv + statistics epilogue
    scale, shift = bn_finalize(mean, var, gamma, beta, eps)                  # per-channel, tiny
    update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)
and the normalized activation act(y*scale + shift) is never written: the next conv_bn_stats applies
it to its operand as a prologue, or the block end applies it once with the residual:
    out = scale_shift_act(y3, s3, t3, residual, [res_scale, res_shift], relu=True)   # dual BN
In eval mode BatchNorm is folded into the conv (reference.fold_bn) and a conv runs as
    out = conv_bias_act(x, W', b', residual, relu).
Backward pieces (conv_bn_stats_backward, scale_shift_act_backward, conv_bias_act_backward) are ops
too, so a backend can fuse them; gradients that autograd does not need are not computed.
Which kernel serves an op on which device is decided in resnet_fast/_dispatch.py only.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _dispatch
from .reference import memory_format_of, stat_dtype

__all__ = [
    "conv_bn_stats", "conv_bn_stats_backward", "bn_finalize", "update_running_stats",
    "scale_shift_act", "scale_shift_act_backward", "conv_bias_act", "conv_bias_act_backward",
]


# ---------------------------------------------------------------------------------------------
# Checks shared by real and fake kernels (so eager and torch.compile raise the same errors).

def _check_act(x: Tensor, name: str) -> None:
    torch._check(x.dim() == 4, lambda: f"{name} must be 4-D (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    torch._check(x.dtype.is_floating_point, lambda: f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_like(t: Optional[Tensor], ref: Tensor, name: str, ref_name: str) -> None:
    if t is None:
        return
    torch._check(t.shape == ref.shape,
                 lambda: f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like {ref_name}")
    torch._check(t.dtype == ref.dtype, lambda: f"{name} has dtype {t.dtype}, expected {ref.dtype} like {ref_name}")
    torch._check(t.device == ref.device, lambda: f"{name} is on {t.device}, expected {ref.device} like {ref_name}")


def _check_vec(v: Optional[Tensor], channels: int, act: Tensor, name: str) -> None:
    if v is None:
        return
    torch._check(v.dim() == 1 and v.shape[0] == channels,
                 lambda: f"{name} must have shape ({channels},), got {tuple(v.shape)}")
    torch._check(v.dtype.is_floating_point, lambda: f"{name} must be floating point, got {v.dtype}")
    torch._check(v.device == act.device, lambda: f"{name} is on {v.device}, expected {act.device}")


def _check_conv(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int) -> List[int]:
    """Validates a conv's arguments and returns its output shape."""
    _check_act(x, "input")
    torch._check(weight.dim() == 4, lambda: f"weight must be 4-D (Cout, Cin/groups, R, S), got {tuple(weight.shape)}")
    torch._check(weight.dtype == x.dtype, lambda: f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    torch._check(weight.device == x.device, lambda: f"input is on {x.device} but weight is on {weight.device}")
    torch._check(len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
                 lambda: "stride, padding and dilation must each have 2 entries")
    torch._check(groups >= 1 and weight.shape[0] % groups == 0, lambda: f"bad groups={groups} for weight")
    torch._check(x.shape[1] == weight.shape[1] * groups,
                 lambda: f"input has {x.shape[1]} channels, expected {weight.shape[1] * groups} "
                         f"(weight {tuple(weight.shape)}, groups={groups})")
    out = [x.shape[0], weight.shape[0]]
    for i in range(2):
        size = (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
        torch._check(size > 0, lambda: f"input spatial size {tuple(x.shape[2:])} is too small for this conv")
        out.append(size)
    return out


def _empty_act(like: Tensor, shape: Sequence[int]) -> Tensor:
    return like.new_empty(shape).contiguous(memory_format=memory_format_of(like))


def _no_grad_tensor(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _grads(results: Sequence[Tensor], needs: Sequence[bool]) -> List[Optional[Tensor]]:
    return [r if n else None for r, n in zip(results, needs)]


# ---------------------------------------------------------------------------------------------
# conv_bn_stats

@torch.library.custom_op("resnet_fast::conv_bn_stats", mutates_args=())
def conv_bn_stats(x: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor], in_relu: bool,
                  weight: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                  groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """y = conv(act(x*in_scale + in_shift) or x, weight); returns (y, mean(y), biased var(y)) per channel."""
    _check_conv_bn_stats(x, in_scale, in_shift, weight, stride, padding, dilation, groups)
    return _dispatch.kernel("conv_bn_stats", x)(x, in_scale, in_shift, in_relu, weight, stride, padding,
                                                dilation, groups)


def _check_conv_bn_stats(x, in_scale, in_shift, weight, stride, padding, dilation, groups):
    shape = _check_conv(x, weight, stride, padding, dilation, groups)
    torch._check((in_scale is None) == (in_shift is None), lambda: "in_scale and in_shift must be given together")
    _check_vec(in_scale, x.shape[1], x, "in_scale")
    _check_vec(in_shift, x.shape[1], x, "in_shift")
    return shape


@conv_bn_stats.register_fake
def _(x, in_scale, in_shift, in_relu, weight, stride, padding, dilation, groups):
    shape = _check_conv_bn_stats(x, in_scale, in_shift, weight, stride, padding, dilation, groups)
    sdt = stat_dtype(x.dtype)
    return _empty_act(x, shape), x.new_empty(shape[1], dtype=sdt), x.new_empty(shape[1], dtype=sdt)


def _conv_bn_stats_setup(ctx, inputs, output):
    x, in_scale, in_shift, in_relu, weight, stride, padding, dilation, groups = inputs
    y, mean, _ = output
    ctx.save_for_backward(x, in_scale, in_shift, weight, y, mean)
    ctx.conv_args = (in_relu, stride, padding, dilation, groups)


def _conv_bn_stats_bwd(ctx, grad_y, grad_mean, grad_var):
    x, in_scale, in_shift, weight, y, mean = ctx.saved_tensors
    in_relu, stride, padding, dilation, groups = ctx.conv_args
    needs = [ctx.needs_input_grad[i] for i in (0, 1, 2, 4)]
    dx, dscale, dshift, dw = conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_scale, in_shift, in_relu,
                                                    weight, y, mean, stride, padding, dilation, groups, needs)
    dx, dscale, dshift, dw = _grads([dx, dscale, dshift, dw], needs)
    return dx, dscale, dshift, None, dw, None, None, None, None


conv_bn_stats.register_autograd(_conv_bn_stats_bwd, setup_context=_conv_bn_stats_setup)


@torch.library.custom_op("resnet_fast::conv_bn_stats_backward", mutates_args=())
def conv_bn_stats_backward(grad_y: Tensor, grad_mean: Tensor, grad_var: Tensor, x: Tensor,
                           in_scale: Optional[Tensor], in_shift: Optional[Tensor], in_relu: bool, weight: Tensor,
                           y: Tensor, mean: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                           groups: int, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, in_scale, in_shift, weight) of conv_bn_stats; unrequested ones are empty tensors.

    dL/dy = grad_y + grad_mean/M + grad_var * 2(y - mean)/M  with M = N*H*W of y, then conv
    backward, then the prologue's backward (recomputing act(x*in_scale + in_shift) from x)."""
    return _dispatch.kernel("conv_bn_stats_backward", x)(grad_y, grad_mean, grad_var, x, in_scale, in_shift,
                                                         in_relu, weight, y, mean, stride, padding, dilation,
                                                         groups, output_mask)


@conv_bn_stats_backward.register_fake
def _(grad_y, grad_mean, grad_var, x, in_scale, in_shift, in_relu, weight, y, mean, stride, padding, dilation,
      groups, output_mask):
    return (_empty_act(x, x.shape) if output_mask[0] else _no_grad_tensor(x),
            torch.empty_like(in_scale) if output_mask[1] else _no_grad_tensor(x),
            torch.empty_like(in_shift) if output_mask[2] else _no_grad_tensor(x),
            torch.empty_like(weight) if output_mask[3] else _no_grad_tensor(x))


# ---------------------------------------------------------------------------------------------
# bn_finalize: (mean, var, gamma, beta) -> (scale, shift)

@torch.library.custom_op("resnet_fast::bn_finalize", mutates_args=())
def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> Tuple[Tensor, Tensor]:
    """scale = weight / sqrt(var + eps), shift = bias - mean * scale (weight 1 and bias 0 when None)."""
    _check_finalize(mean, var, weight, bias)
    scale, shift = _dispatch.kernel("bn_finalize", mean)(mean, var, weight, bias, eps)
    return scale, shift


def _check_finalize(mean, var, weight, bias):
    torch._check(mean.dim() == 1 and var.shape == mean.shape, lambda: "mean and var must be 1-D of equal size")
    _check_vec(weight, mean.shape[0], mean, "BatchNorm weight")
    _check_vec(bias, mean.shape[0], mean, "BatchNorm bias")


@bn_finalize.register_fake
def _(mean, var, weight, bias, eps):
    _check_finalize(mean, var, weight, bias)
    return torch.empty_like(mean), torch.empty_like(mean)


def _bn_finalize_setup(ctx, inputs, output):
    mean, var, weight, bias, eps = inputs
    ctx.save_for_backward(mean, var, weight, output[0])
    ctx.eps = eps
    ctx.has_bias = bias is not None


def _bn_finalize_bwd(ctx, grad_scale, grad_shift):
    # invstd = (var+eps)^-1/2, scale = w*invstd, shift = b - mean*scale: per-channel, plain torch.
    mean, var, weight, scale = ctx.saved_tensors
    invstd = torch.rsqrt(var + ctx.eps)
    g_scale = grad_scale - grad_shift * mean
    g_invstd = g_scale * weight.to(var.dtype) if weight is not None else g_scale
    d_mean = -grad_shift * scale
    d_var = g_invstd * (-0.5) * invstd * invstd * invstd
    d_w = (g_scale * invstd).to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
    d_b = grad_shift.to(var.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return d_mean, d_var, d_w, d_b, None


bn_finalize.register_autograd(_bn_finalize_bwd, setup_context=_bn_finalize_setup)


# ---------------------------------------------------------------------------------------------
# update_running_stats (in place, no autograd)

@torch.library.custom_op("resnet_fast::update_running_stats",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                         mean: Tensor, var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's training-mode update: num_batches_tracked += 1; running_mean and running_var
    move by momentum (or 1/num_batches_tracked when momentum is None) toward mean and the unbiased
    var * count/(count-1). Runs on the device, no host synchronization."""
    _check_update(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)
    _dispatch.kernel("update_running_stats", mean)(running_mean, running_var, num_batches_tracked, mean, var,
                                                   count, momentum)


def _check_update(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
    torch._check(running_mean.shape == mean.shape and running_var.shape == var.shape,
                 lambda: f"running stats of shape {tuple(running_mean.shape)} do not match {tuple(mean.shape)}")
    torch._check(count > 1, lambda: f"need more than 1 value per channel to update running stats, got {count}")
    torch._check(momentum is not None or num_batches_tracked is not None,
                 lambda: "momentum=None (cumulative average) needs num_batches_tracked")


@update_running_stats.register_fake
def _(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
    _check_update(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)


# ---------------------------------------------------------------------------------------------
# scale_shift_act: the BatchNorm apply / block end

@torch.library.custom_op("resnet_fast::scale_shift_act", mutates_args=())
def scale_shift_act(x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
                    res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool) -> Tensor:
    """act(x*scale + shift + r) with r = residual*res_scale + res_shift (dual BN), residual, or 0."""
    _check_ssa(x, scale, shift, residual, res_scale, res_shift)
    return _dispatch.kernel("scale_shift_act", x)(x, scale, shift, residual, res_scale, res_shift, relu)


def _check_ssa(x, scale, shift, residual, res_scale, res_shift):
    _check_act(x, "input")
    _check_vec(scale, x.shape[1], x, "scale")
    _check_vec(shift, x.shape[1], x, "shift")
    _check_like(residual, x, "residual", "the input")
    torch._check((res_scale is None) == (res_shift is None), lambda: "res_scale and res_shift go together")
    torch._check(res_scale is None or residual is not None, lambda: "res_scale needs a residual")
    _check_vec(res_scale, x.shape[1], x, "res_scale")
    _check_vec(res_shift, x.shape[1], x, "res_shift")


@scale_shift_act.register_fake
def _(x, scale, shift, residual, res_scale, res_shift, relu):
    _check_ssa(x, scale, shift, residual, res_scale, res_shift)
    return _empty_act(x, x.shape)


def _ssa_setup(ctx, inputs, output):
    x, scale, shift, residual, res_scale, res_shift, relu = inputs
    ctx.save_for_backward(output, x, scale, shift, residual, res_scale, res_shift)
    ctx.relu = relu


def _ssa_bwd(ctx, grad_out):
    out, x, scale, shift, residual, res_scale, res_shift = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:6])
    grads = scale_shift_act_backward(grad_out, out, x, scale, shift, residual, res_scale, res_shift, ctx.relu,
                                     needs)
    return (*_grads(grads, needs), None)


scale_shift_act.register_autograd(_ssa_bwd, setup_context=_ssa_setup)


@torch.library.custom_op("resnet_fast::scale_shift_act_backward", mutates_args=())
def scale_shift_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, scale: Tensor, shift: Tensor,
                             residual: Optional[Tensor], res_scale: Optional[Tensor], res_shift: Optional[Tensor],
                             relu: bool, output_mask: List[bool]
                             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, scale, shift, residual, res_scale, res_shift) of scale_shift_act, given its output.

    g = grad_out * (out > 0 when relu); dx = g*scale; dscale = sum g*x; dshift = sum g;
    dresidual = g*res_scale (or g); dres_scale = sum g*residual; dres_shift = sum g."""
    return _dispatch.kernel("scale_shift_act_backward", x)(grad_out, out, x, scale, shift, residual, res_scale,
                                                           res_shift, relu, output_mask)


@scale_shift_act_backward.register_fake
def _(grad_out, out, x, scale, shift, residual, res_scale, res_shift, relu, output_mask):
    likes = [x, scale, shift, residual, res_scale, res_shift]
    return tuple((_empty_act(t, t.shape) if t.dim() == 4 else torch.empty_like(t)) if m else _no_grad_tensor(x)
                 for t, m in zip(likes, output_mask))


# ---------------------------------------------------------------------------------------------
# conv_bias_act: eval mode, BatchNorm folded into the conv

@torch.library.custom_op("resnet_fast::conv_bias_act", mutates_args=())
def conv_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], relu: bool,
                  stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """act(conv(x, weight) + bias [+ residual])."""
    _check_cba(x, weight, bias, residual, stride, padding, dilation, groups)
    return _dispatch.kernel("conv_bias_act", x)(x, weight, bias, residual, relu, stride, padding, dilation, groups)


def _check_cba(x, weight, bias, residual, stride, padding, dilation, groups):
    shape = _check_conv(x, weight, stride, padding, dilation, groups)
    _check_vec(bias, shape[1], x, "bias")
    torch._check(bias is None or bias.dtype == x.dtype, lambda: f"bias dtype {bias.dtype} differs from {x.dtype}")
    if residual is not None:
        torch._check(tuple(residual.shape) == tuple(shape),
                     lambda: f"residual has shape {tuple(residual.shape)}, expected {tuple(shape)}")
        torch._check(residual.dtype == x.dtype and residual.device == x.device,
                     lambda: "residual must match the input's dtype and device")
    return shape


@conv_bias_act.register_fake
def _(x, weight, bias, residual, relu, stride, padding, dilation, groups):
    return _empty_act(x, _check_cba(x, weight, bias, residual, stride, padding, dilation, groups))


def _cba_setup(ctx, inputs, output):
    x, weight, bias, residual, relu, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(output, x, weight, bias, residual)
    ctx.conv_args = (relu, stride, padding, dilation, groups)


def _cba_bwd(ctx, grad_out):
    out, x, weight, bias, residual = ctx.saved_tensors
    relu, stride, padding, dilation, groups = ctx.conv_args
    needs = list(ctx.needs_input_grad[:4])
    grads = conv_bias_act_backward(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation,
                                   groups, needs)
    return (*_grads(grads, needs), None, None, None, None, None)


conv_bias_act.register_autograd(_cba_bwd, setup_context=_cba_setup)


@torch.library.custom_op("resnet_fast::conv_bias_act_backward", mutates_args=())
def conv_bias_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                           residual: Optional[Tensor], relu: bool, stride: List[int], padding: List[int],
                           dilation: List[int], groups: int,
                           output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, weight, bias, residual) of conv_bias_act, given its output."""
    return _dispatch.kernel("conv_bias_act_backward", x)(grad_out, out, x, weight, bias, residual, relu, stride,
                                                         padding, dilation, groups, output_mask)


@conv_bias_act_backward.register_fake
def _(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups, output_mask):
    likes = [x, weight, bias, residual]
    return tuple((_empty_act(t, t.shape) if t.dim() == 4 else torch.empty_like(t)) if m else _no_grad_tensor(x)
                 for t, m in zip(likes, output_mask))
