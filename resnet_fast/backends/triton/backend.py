"""Triton primitives and overrides behind the resnet_fast ops (registered in resnet_fast/backends).

Primitives take NHWC (channels_last) activations (the composites convert at the op boundary):
bn_act, bn_act_backward and channel_stats are one Triton pass each (per-block partial sums reduced in
a fixed order: deterministic); conv / conv_backward are aten's (cuDNN). The composites' backward thus
runs aten dgrad / wgrad with the BN-statistics chain rule, the recomputed prologue and its backward as
Triton passes around them; normalized activations are recomputed from the saved raw conv outputs.

Overrides, where the Triton GEMM fuses more than the composite: conv_bn_stats (the previous BN+ReLU
applied as the operand is loaded, zero padding after it; statistics partials in the epilogue, merged
with Chan's formula) and conv_bias_act (bias + residual + ReLU epilogue). Per shape, tuning.py picks
the GEMM or aten + the composite, whichever measured faster (and agrees with aten).
conv_bn_stats_gemm is the dispatch table's "triton-gemm" engine (the registry's TRITON_ENGINES), the GEMM
without the aten alternative; the table's other engines live in closed_backward.py, the cuDNN engine and
the composites.
"""

import functools
from typing import Sequence

import torch
from torch import Tensor

from ... import composites
from ...conventions import aten_conv, memory_format_of
from ...conventions import conv_backward as _aten_conv_backward
from . import launch, tuning
from .launch import nhwc


def _on_tensor_device(fn):
    """Runs a kernel on its first tensor's device: Triton launches on the *current* CUDA device, and
    custom ops get no device guard (a model on cuda:1 without torch.cuda.set_device(1))."""
    @functools.wraps(fn)
    def guarded(*args):
        x = next(a for a in args if isinstance(a, Tensor))
        if x.device.type != "cuda":
            return fn(*args)
        with torch.cuda.device(x.device):
            return fn(*args)

    return guarded


# --- primitives (NHWC in, NHWC out) -------------------------------------------------------------

conv = aten_conv
conv_backward = _aten_conv_backward


@_on_tensor_device
def channel_stats(y: Tensor):
    return launch.channel_stats(y)


@_on_tensor_device
def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu) -> Tensor:
    return launch.bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu)


@_on_tensor_device
def bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, mask: Sequence[bool]):
    return launch.bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, *mask)


# --- whole-op overrides ---------------------------------------------------------------------------

def _choose(kind, x, weight, stride, padding, dilation, groups, flags, run):
    m = x.shape[0] * launch.out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]) \
        * launch.out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    key = (f"{kind}|x{tuple(x.shape)}|w{tuple(weight.shape)}|s{tuple(stride)}|p{tuple(padding)}|"
           f"d{tuple(dilation)}|g{groups}|{x.dtype}|{flags}|{launch.dot_precision(x.dtype)}")
    return tuning.choose(key, x.device, weight.shape[1], weight.shape[0] // groups, m, x.dtype, run)


@_on_tensor_device
def conv_bn_stats(P, x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    xs = nhwc(x)
    prologue = (in_mean, in_scale, in_bias, in_relu) if in_scale is not None else None

    def run(choice):
        if choice == tuning.ATEN:
            return composites.conv_bn_stats(P, xs, in_mean, in_scale, in_bias, in_relu, weight, stride, padding,
                                            dilation, groups)
        return launch.conv2d(xs, weight, stride, padding, dilation, groups, choice, prologue=prologue, stats=True)

    choice = _choose("stats", xs, weight, stride, padding, dilation, groups,
                     f"pro{prologue is not None}{in_mean is not None}{bool(in_relu)}", run)
    y, mean, var = run(choice)
    return y.contiguous(memory_format=memory_format_of(x)), mean, var


@_on_tensor_device
def conv_bn_stats_gemm(P, x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    """conv_bn_stats always on the implicit GEMM in its default block configuration (the dispatch table's
    "triton-gemm" engine: what the GPU probe times and checks under that name)."""
    xs = nhwc(x)
    prologue = (in_mean, in_scale, in_bias, in_relu) if in_scale is not None else None
    m = xs.shape[0] * launch.out_size(xs.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]) \
        * launch.out_size(xs.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    cfg = tuning.default_config(weight.shape[1], weight.shape[0] // groups, m)
    y, mean, var = launch.conv2d(xs, weight, stride, padding, dilation, groups, cfg, prologue=prologue, stats=True)
    return y.contiguous(memory_format=memory_format_of(x)), mean, var


@_on_tensor_device
def conv_bias_act(P, x, weight, bias, residual, relu, stride, padding, dilation, groups):
    xs = nhwc(x)
    res = nhwc(residual) if residual is not None else None

    def run(choice):
        if choice == tuning.ATEN:
            return composites.conv_bias_act(P, xs, weight, bias, res, relu, stride, padding, dilation, groups)
        return launch.conv2d(xs, weight, stride, padding, dilation, groups, choice, bias=bias, residual=res,
                             relu=relu)

    choice = _choose("bias", xs, weight, stride, padding, dilation, groups,
                     f"b{bias is not None}r{res is not None}{relu}", run)
    return run(choice).contiguous(memory_format=memory_format_of(x))
