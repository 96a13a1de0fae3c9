"""The plain-PyTorch backend (RESNET_FAST_BACKEND=reference): the primitive contract in eager torch
ops, on any device. It serves where no kernel is built (RESNET_FAST_SKIP_BUILD=1, a device without
native or Triton support); the ops' composites run on top of it. Outputs keep the input's layout."""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..conventions import aten_conv as conv  # noqa: F401  (primitive)
from ..conventions import conv_backward  # noqa: F401  (primitive)
from ..conventions import memory_format_of, stat_dtype


def _per_channel(v: Tensor) -> Tensor:
    return v[:, None, None]  # (C,) -> (C, 1, 1): broadcasts over (N, C, H, W)


def _centred(t: Tensor, m: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    t = t.to(dtype)
    return t if m is None else t - _per_channel(m)


def channel_stats(y: Tensor) -> Tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(y.to(stat_dtype(y.dtype)), dim=(0, 2, 3), correction=0)
    return mean, var


def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu) -> Tensor:
    sdt = scale.dtype
    acc = torch.addcmul(_per_channel(bias), _centred(x, mean, sdt), _per_channel(scale))
    if residual is not None and res_scale is not None:
        acc += torch.addcmul(_per_channel(res_bias), _centred(residual, res_mean, sdt), _per_channel(res_scale))
    elif residual is not None:
        acc += residual.to(sdt)
    if relu:
        acc.relu_()
    return acc.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def bn_act_backward(grad_out, out, x, mean, scale, residual, res_mean, res_scale, relu, mask: Sequence[bool]):
    need_dx, need_dres, need_sum, need_xsum, need_rsum = mask
    sdt = scale.dtype
    g = grad_out.to(sdt)
    if relu:
        g = torch.where(out > 0, g, g.new_zeros(()))
    fmt = memory_format_of(x)

    def reduce(t):
        return t.sum(dim=(0, 2, 3), dtype=sdt)

    def act_grad(s):  # g*s in x's dtype and layout, a fresh tensor (never grad_out itself)
        t = g * _per_channel(s) if s is not None else g.clone()
        return t.to(x.dtype).contiguous(memory_format=fmt)

    return (act_grad(scale) if need_dx else None,
            act_grad(res_scale) if need_dres else None,
            reduce(g) if need_sum else None,
            reduce(g * _centred(x, mean, sdt)) if need_xsum else None,
            reduce(g * _centred(residual, res_mean, sdt)) if need_rsum else None)
