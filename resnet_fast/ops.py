"""Every op of torch.ops.resnet_fast: schema, input checks, fake kernel and autograd, in one file.

A conv -> BatchNorm -> ReLU unit in training mode is
    y, mean, var = conv_bn_stats(x, prev_mean, prev_scale, prev_bias, prev_relu, W)  # conv + stats epilogue
    scale = bn_finalize(var, gamma, eps)                                              # per-channel, tiny
    update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)
and the normalized activation act((y - mean)*scale + beta) is never written: the next conv_bn_stats
applies it to its operand as a prologue, or the block end applies it once with the residual:
    out = bn_act(y3, m3, s3, b3, residual, [res_mean, res_scale, res_bias], relu=True)   # dual BN
In eval mode BatchNorm is folded into the conv (bn_math.fold_bn) and a conv runs as
    out = conv_bias_act(x, W', b', residual, relu).
Backward pieces (conv_bn_stats_backward, bn_act_backward, conv_bias_act_backward) are ops
too, so a backend can fuse them; gradients that autograd does not need are not computed.

The six activation ops dispatch (resnet_fast/_dispatch.py picks the backend per device; the op's
composite over that backend's primitives, or the backend's override, serves it). bn_finalize and
update_running_stats act on (C,) vectors only: they run resnet_fast/bn_math.py's plain-PyTorch code on
every device, with no dispatch, and bn_finalize's backward is bn_math.finalize_backward.
"""

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _dispatch, bn_math
from .conventions import memory_format_of, stat_dtype

__all__ = [
    "conv_bn_stats", "conv_bn_stats_backward", "bn_finalize", "update_running_stats",
    "bn_act", "bn_act_backward", "conv_bias_act", "conv_bias_act_backward",
]


# ---------------------------------------------------------------------------------------------
# Checks shared by real and fake kernels (so eager and torch.compile raise the same errors).

def _require(cond, message) -> None:
    """torch._check(cond, message), with a fast path for a plain True (every check of a real call: these
    run per op call, and torch._check's symbolic-shape handling costs microseconds each)."""
    if cond is not True:
        torch._check(cond, message)


def _check_act(x: Tensor, name: str) -> None:
    _require(x.dim() == 4, lambda: f"{name} must be 4-D (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    _require(x.dtype.is_floating_point, lambda: f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_like(t: Optional[Tensor], ref: Tensor, name: str, ref_name: str) -> None:
    if t is None:
        return
    _require(t.shape == ref.shape,
                 lambda: f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} like {ref_name}")
    _require(t.dtype == ref.dtype, lambda: f"{name} has dtype {t.dtype}, expected {ref.dtype} like {ref_name}")
    _require(t.device == ref.device, lambda: f"{name} is on {t.device}, expected {ref.device} like {ref_name}")


def _check_vec(v: Optional[Tensor], channels: int, act: Tensor, name: str) -> None:
    if v is None:
        return
    _require(v.dim() == 1 and v.shape[0] == channels,
                 lambda: f"{name} must have shape ({channels},), got {tuple(v.shape)}")
    _require(v.dtype.is_floating_point, lambda: f"{name} must be floating point, got {v.dtype}")
    _require(v.device == act.device, lambda: f"{name} is on {v.device}, expected {act.device}")


def _check_conv(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int) -> List[int]:
    """Validates a conv's arguments and returns its output shape."""
    _check_act(x, "input")
    _require(weight.dim() == 4, lambda: f"weight must be 4-D (Cout, Cin/groups, R, S), got {tuple(weight.shape)}")
    _require(weight.dtype == x.dtype, lambda: f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    _require(weight.device == x.device, lambda: f"input is on {x.device} but weight is on {weight.device}")
    _require(len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
                 lambda: "stride, padding and dilation must each have 2 entries")
    _require(groups >= 1 and weight.shape[0] % groups == 0, lambda: f"bad groups={groups} for weight")
    _require(x.shape[1] == weight.shape[1] * groups,
                 lambda: f"input has {x.shape[1]} channels, expected {weight.shape[1] * groups} "
                         f"(weight {tuple(weight.shape)}, groups={groups})")
    out = [x.shape[0], weight.shape[0]]
    for i in range(2):
        size = (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
        _require(size > 0, lambda: f"input spatial size {tuple(x.shape[2:])} is too small for this conv")
        out.append(size)
    return out


def _empty_act(like: Tensor, shape: Sequence[int]) -> Tensor:
    return like.new_empty(shape).contiguous(memory_format=memory_format_of(like))


def _no_autocast(x: Tensor):
    """Inside an op, dtypes are the caller's: autocast must not recast the aten conv in a kernel
    (the fake kernel promises outputs in the input's dtype). resnet_fast.functional casts explicitly."""
    dev = x.device.type
    return torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev) \
        else contextlib.nullcontext()


def _grads(results: Sequence[Tensor], needs: Sequence[bool]) -> List[Optional[Tensor]]:
    return [r if n else None for r, n in zip(results, needs)]


# ---------------------------------------------------------------------------------------------
# conv_bn_stats

@torch.library.custom_op("resnet_fast::conv_bn_stats", mutates_args=())
def conv_bn_stats(x: Tensor, in_mean: Optional[Tensor], in_scale: Optional[Tensor], in_bias: Optional[Tensor],
                  in_relu: bool, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                  groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """y = conv(prologue(x), weight), prologue(x) = act((x - in_mean)*in_scale + in_bias) or x;
    returns (y, mean(y), biased var(y)) per channel."""
    _check_conv_bn_stats(x, in_mean, in_scale, in_bias, weight, stride, padding, dilation, groups)
    with _no_autocast(x):
        return _dispatch.kernel("conv_bn_stats", x)(x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding,
                                                    dilation, groups)


def _check_conv_bn_stats(x, in_mean, in_scale, in_bias, weight, stride, padding, dilation, groups):
    shape = _check_conv(x, weight, stride, padding, dilation, groups)
    _require((in_scale is None) == (in_bias is None), lambda: "in_scale and in_bias must be given together")
    _require(in_mean is None or in_scale is not None, lambda: "in_mean needs in_scale")
    for v, name in ((in_mean, "in_mean"), (in_scale, "in_scale"), (in_bias, "in_bias")):
        _check_vec(v, x.shape[1], x, name)
    return shape


@conv_bn_stats.register_fake
def _(x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    shape = _check_conv_bn_stats(x, in_mean, in_scale, in_bias, weight, stride, padding, dilation, groups)
    sdt = stat_dtype(x.dtype)
    return _empty_act(x, shape), x.new_empty(shape[1], dtype=sdt), x.new_empty(shape[1], dtype=sdt)


def _conv_bn_stats_setup(ctx, inputs, output):
    x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups = inputs
    y, mean, _ = output
    ctx.save_for_backward(x, in_mean, in_scale, in_bias, weight, y, mean)
    ctx.conv_args = (in_relu, stride, padding, dilation, groups)


def _conv_bn_stats_bwd(ctx, grad_y, grad_mean, grad_var):
    x, in_mean, in_scale, in_bias, weight, y, mean = ctx.saved_tensors
    in_relu, stride, padding, dilation, groups = ctx.conv_args
    needs = [ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 5)]
    grads = conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y,
                                   mean, stride, padding, dilation, groups, needs)
    dx, dmean, dscale, dbias, dw = _grads(grads, needs)
    return dx, dmean, dscale, dbias, None, dw, None, None, None, None


conv_bn_stats.register_autograd(_conv_bn_stats_bwd, setup_context=_conv_bn_stats_setup)


@torch.library.custom_op("resnet_fast::conv_bn_stats_backward", mutates_args=())
def conv_bn_stats_backward(grad_y: Tensor, grad_mean: Tensor, grad_var: Tensor, x: Tensor, in_mean: Optional[Tensor],
                           in_scale: Optional[Tensor], in_bias: Optional[Tensor], in_relu: bool, weight: Tensor,
                           y: Tensor, mean: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                           groups: int, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, in_mean, in_scale, in_bias, weight) of conv_bn_stats; unrequested ones are empty.

    dL/dy = grad_y + grad_mean/M + grad_var * 2(y - mean)/M  with M = N*H*W of y, then conv
    backward, then the prologue's backward (recomputing the prologue from x)."""
    with _no_autocast(x):
        return _dispatch.kernel("conv_bn_stats_backward", x)(grad_y, grad_mean, grad_var, x, in_mean, in_scale,
                                                             in_bias, in_relu, weight, y, mean, stride, padding,
                                                             dilation, groups, output_mask)


@conv_bn_stats_backward.register_fake
def _(grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean, stride, padding,
      dilation, groups, output_mask):
    return _fake_grads([x, in_mean, in_scale, in_bias, weight], output_mask)


def _fake_grads(likes, output_mask):
    return tuple((_empty_act(t, t.shape) if t.dim() == 4 else torch.empty_like(t)) if m and t is not None
                 else likes[0].new_empty(0) for t, m in zip(likes, output_mask))


# ---------------------------------------------------------------------------------------------
# bn_finalize: var, gamma -> scale

@torch.library.custom_op("resnet_fast::bn_finalize", mutates_args=())
def bn_finalize(var: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """scale = weight / sqrt(var + eps) (weight 1 when None): the BatchNorm's per-channel multiplier."""
    _check_finalize(var, weight)
    return bn_math.finalize(var, weight, eps)


def _check_finalize(var, weight):
    _require(var.dim() == 1, lambda: f"var must be 1-D, got shape {tuple(var.shape)}")
    _check_vec(weight, var.shape[0], var, "BatchNorm weight")


@bn_finalize.register_fake
def _(var, weight, eps):
    _check_finalize(var, weight)
    return torch.empty_like(var)


def _bn_finalize_setup(ctx, inputs, output):
    var, weight, eps = inputs
    ctx.save_for_backward(var, weight)
    ctx.eps = eps


def _bn_finalize_bwd(ctx, grad_scale):
    var, weight = ctx.saved_tensors
    d_var, d_w = bn_math.finalize_backward(grad_scale, var, weight, ctx.eps, ctx.needs_input_grad[1])
    return d_var, d_w, None


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
    bn_math.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)


def _check_update(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
    _require(running_mean.shape == mean.shape and running_var.shape == var.shape,
                 lambda: f"running stats of shape {tuple(running_mean.shape)} do not match {tuple(mean.shape)}")
    _require(count > 1, lambda: f"need more than 1 value per channel to update running stats, got {count}")
    _require(momentum is not None or num_batches_tracked is not None,
                 lambda: "momentum=None (cumulative average) needs num_batches_tracked")


@update_running_stats.register_fake
def _(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
    _check_update(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)


# ---------------------------------------------------------------------------------------------
# bn_act: the BatchNorm apply / block end

@torch.library.custom_op("resnet_fast::bn_act", mutates_args=())
def bn_act(x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor, residual: Optional[Tensor],
           res_mean: Optional[Tensor], res_scale: Optional[Tensor], res_bias: Optional[Tensor],
           relu: bool) -> Tensor:
    """act((x - mean)*scale + bias + r), r = (residual - res_mean)*res_scale + res_bias (dual BN),
    residual, or 0; a mean of None is 0."""
    _check_bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias)
    return _dispatch.kernel("bn_act", x)(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu)


def _check_bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias):
    _check_act(x, "input")
    _check_like(residual, x, "residual", "the input")
    _require((res_scale is None) == (res_bias is None), lambda: "res_scale and res_bias go together")
    _require(res_scale is None or residual is not None, lambda: "res_scale needs a residual")
    _require(res_mean is None or res_scale is not None, lambda: "res_mean needs res_scale")
    for v, name in ((mean, "mean"), (scale, "scale"), (bias, "bias"), (res_mean, "res_mean"),
                    (res_scale, "res_scale"), (res_bias, "res_bias")):
        _check_vec(v, x.shape[1], x, name)


@bn_act.register_fake
def _(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu):
    _check_bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias)
    return _empty_act(x, x.shape)


def _bn_act_setup(ctx, inputs, output):
    *tensors, relu = inputs
    ctx.save_for_backward(output, *tensors)
    ctx.relu = relu


def _bn_act_bwd(ctx, grad_out):
    out, *tensors = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:8])
    grads = bn_act_backward(grad_out, out, *tensors, ctx.relu, needs)
    return (*_grads(grads, needs), None)


bn_act.register_autograd(_bn_act_bwd, setup_context=_bn_act_setup)


@torch.library.custom_op("resnet_fast::bn_act_backward", mutates_args=())
def bn_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor,
                    residual: Optional[Tensor], res_mean: Optional[Tensor], res_scale: Optional[Tensor],
                    res_bias: Optional[Tensor], relu: bool, output_mask: List[bool]
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, mean, scale, bias, residual, res_mean, res_scale, res_bias) of bn_act, given its output.

    g = grad_out * (out > 0 when relu); dx = g*scale; dmean = -scale*sum g; dscale = sum g*(x - mean);
    dbias = sum g; dresidual = g*res_scale (or g); dres_mean = -res_scale*sum g;
    dres_scale = sum g*(residual - res_mean); dres_bias = sum g."""
    return _dispatch.kernel("bn_act_backward", x)(grad_out, out, x, mean, scale, bias, residual, res_mean, res_scale,
                                                  res_bias, relu, output_mask)


@bn_act_backward.register_fake
def _(grad_out, out, x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu, output_mask):
    return _fake_grads([x, mean, scale, bias, residual, res_mean, res_scale, res_bias], output_mask)


# ---------------------------------------------------------------------------------------------
# conv_bias_act: eval mode, BatchNorm folded into the conv

@torch.library.custom_op("resnet_fast::conv_bias_act", mutates_args=())
def conv_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], relu: bool,
                  stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """act(conv(x, weight) + bias [+ residual]). bias may be in the input's dtype or, to keep a folded
    BatchNorm shift exact under autocast, in the stat dtype (float32): then it is added in that precision."""
    _check_cba(x, weight, bias, residual, stride, padding, dilation, groups)
    with _no_autocast(x):
        return _dispatch.kernel("conv_bias_act", x)(x, weight, bias, residual, relu, stride, padding, dilation,
                                                    groups)


def plain_eager(x: Tensor) -> bool:
    """Real tensors and nothing tracing (not compiling, exporting or jit-tracing): where the models may call a
    backend's kernel without the torch.library layer (docs/ARCHITECTURE.md, "Plain eager skips the op layer")."""
    return type(x) is torch.Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def conv_bias_act_call(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], relu: bool,
                       stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """conv_bias_act(...) as the models call it: where nothing needs a gradient in plain eager (real tensors,
    nothing tracing), the backend's kernel itself, with the op's checks (the same kernel, the same numbers;
    the op layer costs ~50-100 us per call, ~5% of a batch-1 resnet50 CPU inference); else the op."""
    if plain_eager(x) and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                               for t in (x, weight, bias, residual))):
        _check_cba(x, weight, bias, residual, stride, padding, dilation, groups)
        with _no_autocast(x):
            return _dispatch.kernel("conv_bias_act", x)(x, weight, bias, residual, relu, stride, padding, dilation,
                                                        groups)
    return conv_bias_act(x, weight, bias, residual, relu, stride, padding, dilation, groups)


def _check_cba(x, weight, bias, residual, stride, padding, dilation, groups):
    shape = _check_conv(x, weight, stride, padding, dilation, groups)
    _check_vec(bias, shape[1], x, "bias")
    _require(bias is None or bias.dtype in (x.dtype, stat_dtype(x.dtype)),
                 lambda: f"bias dtype {bias.dtype} must be the input's ({x.dtype}) or {stat_dtype(x.dtype)}")
    if residual is not None:
        _require(tuple(residual.shape) == tuple(shape),
                     lambda: f"residual has shape {tuple(residual.shape)}, expected {tuple(shape)}")
        _require(residual.dtype == x.dtype and residual.device == x.device,
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
    with _no_autocast(x):
        return _dispatch.kernel("conv_bias_act_backward", x)(grad_out, out, x, weight, bias, residual, relu, stride,
                                                             padding, dilation, groups, output_mask)


@conv_bias_act_backward.register_fake
def _(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups, output_mask):
    return _fake_grads([x, weight, bias, residual], output_mask)
