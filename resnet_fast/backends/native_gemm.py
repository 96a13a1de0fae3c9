"""Native backend, CPU training: convolutions over few output pixels as the GEMMs they are.

A 1x1 convolution of an NHWC (channels_last) x is, with M = N*Ho*Wo rows,
    forward  y2[M, Co] = x2[M, C] @ W2[Co, C]^T      (x2: x subsampled by the stride, viewed as M x C)
    dgrad    dx2[M, C] = g2[M, Co] @ W2               (scattered back to the stride's grid, zeros elsewhere)
    wgrad    dW2[Co, C] = g2^T @ x2
and a k x k convolution's weight gradient is dW2[Co, R*S*C] = g2^T @ im2col(x) (columns ordered (r, s, c),
i.e. the channels_last weight). On the CPU BLAS (torch.mm) these run faster than oneDNN's training
convolution when M is small (oneDNN reorders the weight, which changes every step, on every call, and its
weight gradient parallelizes poorly over few pixels): measured on the 2-core development VM (AVX-512, torch
2.14.1, float32, 2026-12-01, benchmarks/results/cpu-train-gemm-conv-2026-12-01.md) 1x1: 0.9-2.1x per pass at
M = 1600, 1.1-4.9x at M <= 400, while at M >= 6400 (ResNet-50's layer1 at batch 4 x 160²) oneDNN is as fast
or faster; k x k: the im2col weight gradient 1.1-5x at M <= 400, its forward slower above M = 100.
So a training unit's conv (the native backend's `train_conv` hook) is
  * "gemm": 1x1, groups 1, unpadded, M <= GEMM_MAX_ROWS: forward, dgrad and wgrad as GEMMs;
  * "wgrad": any other groups-1 conv with M <= WGRAD_MAX_ROWS: aten's forward and dgrad, the im2col wgrad;
  * else aten's (oneDNN) convolution,
for float32 / float64 NHWC CPU inputs. Eval keeps oneDNN (with a prepacked weight it is the faster one).
RESNET_FAST_CPU_GEMM_CONV=0 turns the path off. Only plain eager takes it: under torch.compile, torch.export
or jit tracing the graphs keep aten's convolution (which Inductor lowers itself).
"""

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..ops import plain_eager

GEMM_MAX_ROWS = 2048    # 1x1: M = N*Ho*Wo at or below which the GEMM is the faster conv (see above)
WGRAD_MAX_ROWS = 512    # k x k: M at or below which the im2col GEMM is the faster weight gradient


def _enabled() -> bool:
    return os.environ.get("RESNET_FAST_CPU_GEMM_CONV", "1") != "0"


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def plan(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
         groups: int) -> Optional[str]:
    """How the conv of x by weight runs here: "gemm" (a 1x1 conv: forward, dgrad and wgrad as GEMMs),
    "wgrad" (aten's forward and dgrad, the weight gradient as an im2col GEMM), or None (aten's conv)."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and x.dim() == 4 and weight.dim() == 4 and groups == 1 and weight.shape[1] == x.shape[1]
            and x.shape[1] > 0 and weight.shape[0] > 0 and type(weight) in (Tensor, torch.nn.Parameter)
            and x.is_contiguous(memory_format=torch.channels_last) and _enabled() and plain_eager(x)
            and not torch.is_autocast_enabled("cpu")):  # (under autocast aten's conv casts; torch.mm would too)
        return None
    ho = _out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    rows = x.shape[0] * ho * wo
    if rows <= 0:
        return None
    if weight.shape[2] == 1 and weight.shape[3] == 1 and padding[0] == 0 and padding[1] == 0:
        return "gemm" if rows <= GEMM_MAX_ROWS else None
    return "wgrad" if rows <= WGRAD_MAX_ROWS else None


def _rows(x: Tensor, stride: Sequence[int]) -> Tensor:
    """x (NHWC-contiguous) subsampled by stride, as the M x C matrix (a view at stride 1, else a copy)."""
    if stride[0] != 1 or stride[1] != 1:
        x = x[:, :, ::stride[0], ::stride[1]]
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _nhwc(m: Tensor, n: int, h: int, w: int) -> Tensor:
    """An M x C matrix as the (n, C, h, w) channels_last tensor it stores."""
    return m.view(n, h, w, m.shape[1]).permute(0, 3, 1, 2)


def _im2col(x: Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int]) -> Tensor:
    """The M x (R*S*C) patch matrix of an NHWC x, columns ordered (r, s, c) like a channels_last weight's."""
    if padding[0] or padding[1]:
        x = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    ho = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = x.stride()
    patches = x.as_strided((n, ho, wo, kernel[0], kernel[1], c),
                           (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc))
    return patches.reshape(n * ho * wo, kernel[0] * kernel[1] * c)


def _grad_rows(grad_y: Tensor) -> Tensor:
    return grad_y.permute(0, 2, 3, 1).reshape(-1, grad_y.shape[1])  # a view when grad_y is NHWC


class _Conv1x1Gemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride):
        n, c, h, w = x.shape
        ho, wo = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
        x2, w2 = _rows(x, stride), weight.reshape(weight.shape[0], c)
        ctx.save_for_backward(x2, w2)
        ctx.geometry = (n, c, h, w, ho, wo, tuple(stride), weight.shape)
        return _nhwc(torch.mm(x2, w2.t()), n, ho, wo)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x2, w2 = ctx.saved_tensors
        n, c, h, w, ho, wo, stride, wshape = ctx.geometry
        g2 = _grad_rows(grad_y)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _nhwc(torch.mm(g2, w2), n, ho, wo)
            if stride != (1, 1):
                full = grad_y.new_zeros((n, h, w, c)).permute(0, 3, 1, 2)  # NHWC
                full[:, :, ::stride[0], ::stride[1]] = dx
                dx = full
        if ctx.needs_input_grad[1]:
            dw = torch.mm(g2.t(), x2).view(wshape)
        return dx, dw, None


class _ConvGemmWgrad(torch.autograd.Function):
    """aten's convolution and dgrad; the weight gradient g2^T @ im2col(x), (Co, R*S*C) = the NHWC weight."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.args = (list(stride), list(padding), list(dilation))
        return torch.ops.aten.convolution(x, weight, None, *ctx.args, False, [0, 0], 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.args
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(grad_y, x, weight, None, stride, padding, dilation, False,
                                                     [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            co, c, r, s = weight.shape
            cols = _im2col(x, (r, s), stride, padding, dilation)
            dw = torch.mm(_grad_rows(grad_y).t(), cols).view(co, r, s, c).permute(0, 3, 1, 2)
        return dx, dw, None, None, None


def conv2d(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           groups: int) -> Tensor:
    """F.conv2d(x, weight, None, stride, padding, dilation, groups), differentiable; GEMMs where they win."""
    how = plan(x, weight, stride, padding, dilation, groups)
    if how == "gemm":
        return _Conv1x1Gemm.apply(x, weight, tuple(stride))
    if how == "wgrad" and torch.is_grad_enabled() and weight.requires_grad:
        return _ConvGemmWgrad.apply(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)

