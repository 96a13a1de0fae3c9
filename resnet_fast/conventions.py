"""Conventions every backend shares (reference, native C++/CUDA, Triton): the layout an op's outputs
take, the dtype of per-channel vectors, and aten's convolution forward and backward, which every
backend uses as its `conv` / `conv_backward` primitives today. Backends import these from here,
never from each other."""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last when x is laid out NHWC (and not also NCHW-contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of per-channel statistics and scale/shift for activations of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def aten_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], groups: int) -> Tensor:
    """aten's convolution (cuDNN / oneDNN / native); the caller fixes the output's layout."""
    return torch.ops.aten.convolution(x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                      groups)


def conv_backward(dy: Tensor, x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], groups: int, need_x: bool, need_w: bool) -> Tuple[Tensor, Tensor]:
    """aten's dgrad / wgrad, results in x's and weight's layouts; an empty tensor where not needed."""
    dx, dw, _ = torch.ops.aten.convolution_backward(dy, x, weight, None, list(stride), list(padding),
                                                    list(dilation), False, [0, 0], groups, [need_x, need_w, False])
    dx = dx.contiguous(memory_format=memory_format_of(x)) if need_x else x.new_empty(0)
    dw = dw.contiguous(memory_format=memory_format_of(weight)) if need_w else x.new_empty(0)
    return dx, dw
