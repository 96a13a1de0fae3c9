"""conv_bn_stats_backward closed in Triton (the bfloat16 plan: no cuDNN fused engines there), with the op's
signature as a registry override (primitives P first): the "triton-closed" engine of the Triton backend's
conv_bn_stats_backward (resnet_fast.backends.TRITON_ENGINES), chosen per shape by the dispatch table or forced
with resnet_fast.use_engine("conv_bn_stats_backward", "triton-closed"); unverified on a GPU. Two kernels,
neither of which writes dY or the normalized input:
    dW        = wgrad_kernels.wgrad: dY (the BN statistics' chain rule) and the previous BN + ReLU on load;
    dx, sums  = dgrad_kernels.dgrad: dY on load, the ReLU mask and the dBN sums in the epilogue;
    d in_mean = -in_scale * sum g, d in_scale = sum g*(x - in_mean), d in_bias = sum g.
Groups fall back to the composite over P (aten dgrad / wgrad): ResNeXt keeps that path.
Blocks: the kernels' small defaults under the interpreter (every mask exercised on tiny shapes); on a GPU
Hopper-sized tiles (`gpu_blocks`), compile-checked for sm_90 (no spills, shared memory in bounds: the GPU
window's dry run) but never timed: the probe measures them against aten + Triton passes per shape.
"""

from typing import List, Sequence

import torch
from torch import Tensor

from ... import composites
from ...conventions import memory_format_of
from .dgrad_kernels import dgrad
from .tuning import INTERPRET
from .wgrad_kernels import wgrad


def _pow2(n: int, lo: int = 16, hi: int = 128) -> int:
    p = lo
    while p < min(n, hi):
        p *= 2
    return p


def gpu_blocks(cin: int, cout: int):
    """({blocks, num_warps} for wgrad, the same for dgrad) on a GPU: wgrad tiles [BLOCK_N = Cout] x [BLOCK_C = Cin]
    reduced over BLOCK_M = 64 rows; dgrad tiles [BLOCK_M = 128 (64 below 64 channels) pixels] x [BLOCK_C = Cin]
    over BLOCK_K = Cout."""
    bn, bc = _pow2(cout), _pow2(cin, hi=64)
    wg = {"blocks": (64, bn, bc), "num_warps": 8 if bn * bc >= 128 * 64 else 4}
    wide = bc >= 64  # narrow channel tiles get fewer pixels (128 x 16 spills registers for sm_90 in half precision)
    dg = {"blocks": (128 if wide else 64, bc, _pow2(cout, hi=32)), "num_warps": 8 if wide else 4}
    return wg, dg


def _blocks(x: Tensor, weight: Tensor):
    # meta tensors: the sm_90 compile plan (scripts/sm90_compile.py), which records what a GPU would launch
    return ({}, {}) if INTERPRET or x.device.type == "cpu" else gpu_blocks(x.shape[1], weight.shape[0])


def closed_wgrad(x: Tensor, grad_y: Tensor, weight: Tensor, stride, padding, dilation, prologue=None,
                 chain=None) -> Tensor:
    """dW in weight's dtype and memory format: the wgrad kernel, the prologue (and dY, when chain is given) on
    load. Also the wgrad of the cuDNN backend's closed-wgrad+cudnn-dgrad engine (which passes dY formed)."""
    if x.device.type != "cuda":
        return _wgrad(x, grad_y, weight, stride, padding, dilation, prologue, chain)
    with torch.cuda.device(x.device):
        return _wgrad(x, grad_y, weight, stride, padding, dilation, prologue, chain)


def _wgrad(x, grad_y, weight, stride, padding, dilation, prologue, chain) -> Tensor:
    dw = wgrad(x, grad_y, weight.shape, stride, padding, dilation, prologue=prologue, chain=chain,
               **_blocks(x, weight)[0])
    return dw.to(weight.dtype).contiguous(memory_format=memory_format_of(weight))


def conv_bn_stats_backward(P, *args) -> List[Tensor]:
    x = args[3]
    if x.device.type != "cuda":
        return _closed(P, *args)
    with torch.cuda.device(x.device):  # Triton launches on the current device; custom ops get no guard
        return _closed(P, *args)


def _closed(P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean, stride, padding,
            dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    if groups != 1:
        return composites.conv_bn_stats_backward(P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias,
                                                 in_relu, weight, y, mean, stride, padding, dilation, groups,
                                                 output_mask)
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    count = y.numel() // y.shape[1]
    chain = (y, mean, grad_var * (2.0 / count), grad_mean / count)
    prologue = (in_mean, in_scale, in_bias, in_relu) if in_scale is not None else None
    empty = x.new_empty(0)
    dg = _blocks(x, weight)[1]
    dw = closed_wgrad(x, grad_y, weight, stride, padding, dilation, prologue, chain) if need_w else empty
    if not (need_x or need_mean or need_scale or need_bias):
        return [empty, empty, empty, empty, dw]
    dx, total, xsum = dgrad(grad_y, weight, x, stride, padding, dilation, prologue=prologue, chain=chain, **dg)
    dx = dx.contiguous(memory_format=memory_format_of(x)) if need_x else empty
    if prologue is None:
        return [dx, empty, empty, empty, dw]
    return [dx, -in_scale * total if need_mean and in_mean is not None else empty, xsum if need_scale else empty,
            total if need_bias else empty, dw]
