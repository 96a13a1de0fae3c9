"""BatchNorm's per-channel vector math, the same plain-PyTorch code on every device and backend
(a few (C,) tensors per BatchNorm: no kernel to choose, so no dispatch): the finalize step and its
backward, the running-statistics update, and the eval-mode fold into the conv."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor


def finalize(var: Tensor, weight: Optional[Tensor], eps: float) -> Tensor:
    """scale = weight * (var + eps)^-1/2 (weight 1 when the BatchNorm is not affine)."""
    invstd = torch.rsqrt(var + eps)
    return invstd * weight.to(var.dtype) if weight is not None else invstd


def finalize_backward(grad_scale: Tensor, var: Tensor, weight: Optional[Tensor], eps: float,
                      need_weight: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """(d var, d weight) of finalize: d var = g*w * (-1/2)(var + eps)^-3/2, d weight = g*(var + eps)^-1/2."""
    invstd = torch.rsqrt(var + eps)
    g_invstd = grad_scale * weight.to(var.dtype) if weight is not None else grad_scale
    d_var = g_invstd * (-0.5) * invstd * invstd * invstd
    d_w = (grad_scale * invstd).to(weight.dtype) if weight is not None and need_weight else None
    return d_var, d_w


def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                         mean: Tensor, var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's training-mode update, in place and on the device (no host synchronization):
    num_batches_tracked += 1, then running = (1 - f)*running + f*batch with f = momentum, or
    1/num_batches_tracked when momentum is None; the variance stored is the unbiased var*count/(count-1)."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is None:
        if num_batches_tracked is None:
            raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
        factor = 1.0 / num_batches_tracked.to(torch.float64)
    else:
        factor = momentum
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        running_mean.copy_(running_mean * (1 - factor) + mean.to(running_mean.dtype) * factor)
        running_var.copy_(running_var * (1 - factor) + unbiased.to(running_var.dtype) * factor)


def update_running_stats_many(running_means: List[Tensor], running_vars: List[Tensor],
                              num_batches_tracked: List[Optional[Tensor]], means: List[Tensor], vars_: List[Tensor],
                              counts: List[int], momenta: List[float]) -> None:
    """update_running_stats for many BatchNorms with a momentum each, as foreach ops: the same elementwise
    arithmetic (running*(1 - f) + batch*f, unbiased var = var*count/(count - 1)), so the same numbers."""
    counters = [t for t in num_batches_tracked if t is not None]
    if counters:
        torch._foreach_add_(counters, 1)
    unbiased = torch._foreach_mul(vars_, [c / max(c - 1, 1) for c in counts])
    with torch.no_grad():
        for running, batch in ((running_means, means), (running_vars, unbiased)):
            batch = [b if b.dtype == r.dtype else b.to(r.dtype) for b, r in zip(batch, running)]
            new = torch._foreach_mul(running, [1 - f for f in momenta])
            torch._foreach_add_(new, torch._foreach_mul(batch, momenta))
            torch._foreach_copy_(running, new)


def fold_bn(conv_weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Tensor,
            running_var: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm folded into the preceding conv (computed in float64, returned in the
    conv weight's dtype): W' = W * gamma/sqrt(rv + eps) per output channel, b' = beta - rm * that."""
    f64 = torch.float64
    scale = finalize(running_var.to(f64), None if bn_weight is None else bn_weight.to(f64), eps)
    shift = -running_mean.to(f64) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(f64)
    w = (conv_weight.to(f64) * scale.view(-1, 1, 1, 1)).to(conv_weight.dtype)
    return w, shift.to(conv_weight.dtype)
