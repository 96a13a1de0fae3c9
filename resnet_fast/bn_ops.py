"""torch.ops.resnet_fast.batch_norm_act: a training-mode BatchNorm (+ residual) (+ ReLU) written once.

Where the convolution cannot apply a BatchNorm on load (aten's convolution on CPU, or on any backend
whose registry entry says training="materialized"), the normalized activation has to be written for
the next conv anyway; this op writes it once and keeps it for backward, as eager does, with fewer
passes than eager's BatchNorm -> add -> ReLU:

    out, mean, var = batch_norm_act(x, weight, bias, residual, eps, relu)
    out = act((x - mean) * weight/sqrt(var + eps) + bias [+ residual]),  mean / var: x's batch statistics
          per channel (biased var, in the stat dtype), for the caller's running-statistics update.

Backward (batch_norm_act_backward), with g = grad_out * (out > 0 when relu), M = N*H*W, s = w/sqrt(var + eps):
    d bias = Σg,  d weight = Σg·(x - mean) / sqrt(var + eps),  d residual = g,
    dx = s * (g - Σg/M - (x - mean) * Σg·(x - mean) / (M (var + eps))).
mean and var are returned for the statistics update only: they are not differentiable (a gradient
through batch statistics is already part of dx).
Both ops dispatch like the others (resnet_fast/_dispatch.py); resnet_fast/composites.py writes them
over the primitives, and a backend may override them (the native CPU kernels do both in one call each).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _dispatch
from .conventions import stat_dtype
from .ops import _check_act, _check_like, _check_vec, _empty_act, _fake_grads, _grads, _no_autocast, _require

__all__ = ["batch_norm_act", "batch_norm_act_backward"]


def _check(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], eps: float):
    _check_act(x, "input")
    _check_vec(weight, x.shape[1], x, "BatchNorm weight")
    _check_vec(bias, x.shape[1], x, "BatchNorm bias")
    _check_like(residual, x, "residual", "the input")
    _require(eps > 0, lambda: f"eps must be positive, got {eps}")
    _require(x.numel() // max(x.shape[1], 1) > 1,
                 lambda: f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


@torch.library.custom_op("resnet_fast::batch_norm_act", mutates_args=())
def batch_norm_act(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
                   eps: float, relu: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(act((x - mean)*weight/sqrt(var + eps) + bias [+ residual]), mean, biased var) over x's batch."""
    _check(x, weight, bias, residual, eps)
    with _no_autocast(x):
        return _dispatch.kernel("batch_norm_act", x)(x, weight, bias, residual, eps, relu)


@batch_norm_act.register_fake
def _(x, weight, bias, residual, eps, relu):
    _check(x, weight, bias, residual, eps)
    sdt = stat_dtype(x.dtype)
    return _empty_act(x, x.shape), x.new_empty(x.shape[1], dtype=sdt), x.new_empty(x.shape[1], dtype=sdt)


def _setup(ctx, inputs, output):
    x, weight, bias, residual, eps, relu = inputs
    out, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(out, x, weight, mean, var)
    ctx.args = (eps, relu, bias is not None)


def _backward(ctx, grad_out, grad_mean, grad_var):
    out, x, weight, mean, var = ctx.saved_tensors
    eps, relu, has_bias = ctx.args
    need_x, need_w, need_b, need_res = (ctx.needs_input_grad[i] for i in range(4))
    needs = [need_x, need_w and weight is not None, need_b and has_bias, need_res]
    grads = batch_norm_act_backward(grad_out, out, x, weight, mean, var, eps, relu, needs)
    return (*_grads(grads, needs), None, None)


batch_norm_act.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("resnet_fast::batch_norm_act_backward", mutates_args=())
def batch_norm_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                            var: Tensor, eps: float, relu: bool,
                            output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, weight, bias, residual) of batch_norm_act, given its output; unrequested ones are empty."""
    _require(len(output_mask) == 4, lambda: f"output_mask must have 4 entries, got {len(output_mask)}")
    _check_like(grad_out, x, "grad_out", "the input")
    _check_like(out, x, "out", "the input")
    with _no_autocast(x):
        return _dispatch.kernel("batch_norm_act_backward", x)(grad_out, out, x, weight, mean, var, eps, relu,
                                                              output_mask)


@batch_norm_act_backward.register_fake
def _(grad_out, out, x, weight, mean, var, eps, relu, output_mask):
    w = weight if weight is not None else mean
    return _fake_grads([x, w, w, x], output_mask)
