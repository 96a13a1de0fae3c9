"""torch.ops.resnet_fast.batch_stats and batch_norm_act: a training-mode BatchNorm (+ residual) (+ ReLU)
written once.

Where the convolution cannot apply a BatchNorm on load (aten's convolution on CPU, or on any backend
whose registry entry says training="materialized"), the normalized activation has to be written for
the next conv anyway; these ops write it once and keep it for backward, as eager does, with fewer
passes than eager's BatchNorm -> add -> ReLU:

    mean, var = batch_stats(x)                 x's batch statistics per channel (biased var, stat dtype);
                                               no gradient (the caller updates running statistics now)
    out = batch_norm_act(x, mean, var, weight, bias, residual, eps, relu)
        = act((x - mean) * weight/sqrt(var + eps) + bias [+ residual])

mean and var must be x's batch statistics (from batch_stats): batch_norm_act is BatchNorm over the batch,
and its gradient with respect to x includes the statistics' own dependence on x; mean and var get none.
(Two ops rather than one so the running-statistics update happens between them, before the op that
saves tensors for backward: torch.utils.checkpoint's recompute may stop right after that op.)

Backward (batch_norm_act_backward), with g = grad_out * (out > 0 when relu), M = N*H*W, s = w/sqrt(var + eps):
    d bias = Σg,  d weight = Σg·(x - mean) / sqrt(var + eps),  d residual = g,
    dx = s * (g - Σg/M - (x - mean) * Σg·(x - mean) / (M (var + eps))).
All three dispatch like the others (resnet_fast/_dispatch.py); resnet_fast/composites.py writes them over
the primitives, and a backend may override them (native CPU: one C++ call each for batch_norm_act and its
backward).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _dispatch
from .conventions import stat_dtype
from .ops import _check_act, _check_like, _check_vec, _empty_act, _fake_grads, _grads, _require, plain_eager

__all__ = ["batch_stats", "batch_norm_act", "batch_norm_act_backward"]


def _check(x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
           residual: Optional[Tensor], eps: float):
    _check_stats_input(x)
    for v, name in ((mean, "mean"), (var, "var"), (weight, "BatchNorm weight"), (bias, "BatchNorm bias")):
        _check_vec(v, x.shape[1], x, name)
    _check_like(residual, x, "residual", "the input")
    _require(eps > 0, lambda: f"eps must be positive, got {eps}")


def _check_stats_input(x: Tensor):
    _check_act(x, "input")
    _require(x.numel() // max(x.shape[1], 1) > 1,
             lambda: f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


@torch.library.custom_op("resnet_fast::batch_stats", mutates_args=())
def batch_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(mean, biased var) of x per channel, in the stat dtype; not differentiable (see the module doc)."""
    _check_stats_input(x)
    return _dispatch.kernel("batch_stats", x)(x)


@batch_stats.register_fake
def _(x):
    _check_stats_input(x)
    sdt = stat_dtype(x.dtype)
    return x.new_empty(x.shape[1], dtype=sdt), x.new_empty(x.shape[1], dtype=sdt)


def _stats_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _stats_backward(ctx, grad_mean, grad_var):
    return None


batch_stats.register_autograd(_stats_backward, setup_context=_stats_setup)


@torch.library.custom_op("resnet_fast::batch_norm_act", mutates_args=())
def batch_norm_act(x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   residual: Optional[Tensor], eps: float, relu: bool) -> Tensor:
    """act((x - mean)*weight/sqrt(var + eps) + bias [+ residual]), mean / var x's batch statistics."""
    _check(x, mean, var, weight, bias, residual, eps)
    return _dispatch.kernel("batch_norm_act", x)(x, mean, var, weight, bias, residual, eps, relu)


@batch_norm_act.register_fake
def _(x, mean, var, weight, bias, residual, eps, relu):
    _check(x, mean, var, weight, bias, residual, eps)
    return _empty_act(x, x.shape)


def _setup(ctx, inputs, output):
    x, mean, var, weight, bias, residual, eps, relu = inputs
    ctx.save_for_backward(output, x, weight, mean, var)
    ctx.args = (eps, relu, bias is not None)


def _backward(ctx, grad_out, backward_op=None):
    out, x, weight, mean, var = ctx.saved_tensors
    eps, relu, has_bias = ctx.args
    need_x, need_w, need_b, need_res = (ctx.needs_input_grad[i] for i in (0, 3, 4, 5))
    needs = [need_x, need_w and weight is not None, need_b and has_bias, need_res]
    grads = (backward_op or batch_norm_act_backward)(grad_out, out, x, weight, mean, var, eps, relu, needs)
    dx, dw, db, dres = _grads(grads, needs)
    return dx, None, None, dw, db, dres, None, None


batch_norm_act.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Plain eager: the same kernels without the torch.library layer.
#
# A custom op's Python dispatch and generated autograd cost ~120 us per BatchNorm forward + backward
# (measured on the 2-core CPU VM, 2026-12-01: 173 vs 55 us for a 2x64x2x2 input), 2% of a resnet50 CPU
# training step. In plain eager (real tensors, nothing tracing) the models call the backend's kernels
# through this autograd.Function instead: the same kernels the ops dispatch to, the same checks, the
# same numbers (tested bitwise). torch.compile, torch.export and torch.jit.trace see the ops.

class _BatchNormActEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, residual, eps, relu):
        out = _dispatch.kernel("batch_norm_act", x)(x, mean, var, weight, bias, residual, eps, relu)
        _setup(ctx, (x, mean, var, weight, bias, residual, eps, relu), out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        def kernel(grad_out, out, x, *args):
            return _dispatch.kernel("batch_norm_act_backward", x)(grad_out, out, x, *args)
        return _backward(ctx, grad_out, kernel)


def batch_stats_call(x: Tensor) -> Tuple[Tensor, Tensor]:
    """batch_stats(x) of a detached x: the kernel itself in plain eager, else the op."""
    if plain_eager(x):
        _check_stats_input(x)
        return _dispatch.kernel("batch_stats", x)(x)
    return batch_stats(x)


def batch_norm_act_call(x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                        residual: Optional[Tensor], eps: float, relu: bool) -> Tensor:
    """batch_norm_act(...): the autograd.Function above in plain eager, else the op."""
    if plain_eager(x):
        _check(x, mean, var, weight, bias, residual, eps)
        return _BatchNormActEager.apply(x, mean, var, weight, bias, residual, eps, relu)
    return batch_norm_act(x, mean, var, weight, bias, residual, eps, relu)


@torch.library.custom_op("resnet_fast::batch_norm_act_backward", mutates_args=())
def batch_norm_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                            var: Tensor, eps: float, relu: bool,
                            output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, weight, bias, residual) of batch_norm_act, given its output; unrequested ones are empty."""
    _require(len(output_mask) == 4, lambda: f"output_mask must have 4 entries, got {len(output_mask)}")
    _check_like(grad_out, x, "grad_out", "the input")
    _check_like(out, x, "out", "the input")
    return _dispatch.kernel("batch_norm_act_backward", x)(grad_out, out, x, weight, mean, var, eps, relu,
                                                          output_mask)


@batch_norm_act_backward.register_fake
def _(grad_out, out, x, weight, mean, var, eps, relu, output_mask):
    w = weight if weight is not None else mean
    return _fake_grads([x, w, w, x], output_mask)
