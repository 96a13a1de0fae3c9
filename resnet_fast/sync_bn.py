"""BatchNorm statistics across processes for the fused path (nn.SyncBatchNorm's semantics).

Two ways in, same computation:
  * `resnet_fast.convert_sync_batchnorm(model)` turns every nn.BatchNorm2d into `SyncBatchNorm2d`
    (an nn.BatchNorm2d subclass: same parameters, buffers, state_dict keys); works under DDP on CPU
    (gloo) and CUDA (NCCL). DDP refuses nn.SyncBatchNorm in a CPU module, hence this class.
  * `nn.SyncBatchNorm.convert_sync_batchnorm(model)`: the fused path accepts nn.SyncBatchNorm too
    (CUDA only under DDP, torch's rule).
In training mode, with an initialized process group of more than one process, each rank's
per-channel statistics (n_r, mean_r, var_r) (var biased) are replaced by those of all ranks'
batches together, between conv_bn_stats and bn_finalize:

    N = sum_r n_r,   mean = sum_r n_r mean_r / N,   var = sum_r n_r (var_r + (mean_r - mean)^2) / N

(Chan et al.'s parallel combination: every term is non-negative, so there is no E[x^2] - E[x]^2
cancellation; it runs in float64). The running-statistics update then uses the global N.

The gather is differentiable. Its backward sums, over ranks, the gradient with respect to every
rank's gathered statistics and hands each rank its own slice: rank r's conv output receives the
gradient of every rank's loss through the shared mean and variance, as with nn.SyncBatchNorm. Under
DDP, which averages parameter gradients, the step equals one process on the concatenated batch
(with uneven shards, when each rank's loss is weighted by its share of the batch).
Cost per BatchNorm: one all_gather of 2C+1 float64 values per rank in forward, one all_reduce of
world_size x (2C+1) in backward, and one host sync (the global count is a Python int).

Like nn.SyncBatchNorm, eval mode and a missing or one-process group use the local batch only.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn


class SyncBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics cover every process of `process_group` (None:
    the default group). resnet_fast's blocks fuse it; anywhere else its own forward below runs."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        group = sync_group(self)
        if group is None:
            return super().forward(x)
        self._check_input_dim(x)
        stat = torch.float64 if x.dtype == torch.float64 else torch.float32
        var, mean = torch.var_mean(x.to(stat), dim=(0, 2, 3), correction=0)
        mean, var, count = combine_stats(mean, var, x.numel() // x.shape[1], group)
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count} over all ranks")
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), m)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.bias is not None else 0)
        return (x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype))


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """`module` with every nn.BatchNorm2d / nn.SyncBatchNorm replaced by a SyncBatchNorm2d sharing its
    parameters and buffers (other norm layers, subclasses included, are left alone); the drop-in for
    nn.SyncBatchNorm.convert_sync_batchnorm that also works under DDP on CPU."""
    if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        new = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group=process_group)
        new.__dict__["_parameters"] = dict(module._parameters)
        new.__dict__["_buffers"] = dict(module._buffers)
        new.train(module.training)
        if hasattr(module, "qconfig"):
            new.qconfig = module.qconfig
        return new
    for name, child in module.named_children():
        module._modules[name] = convert_sync_batchnorm(child, process_group)
    return module


def sync_group(bn: nn.Module) -> Optional["dist.ProcessGroup"]:
    """The process group whose statistics `bn` combines now, or None (local statistics).

    nn.SyncBatchNorm.forward's rule: training mode, torch.distributed initialized, group size > 1."""
    if not (isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm2d)) and bn.training and dist.is_available()
            and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class _AllGatherRows(torch.autograd.Function):
    """(K,) per rank -> (world, K), row r from rank r; backward: sum over ranks, keep own row."""

    @staticmethod
    def forward(ctx, local: Tensor, group) -> Tensor:
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, local.contiguous(), group=group)
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def combine_stats(mean: Tensor, var: Tensor, count: int, group) -> Tuple[Tensor, Tensor, int]:
    """Every rank's (count, mean, biased var) of shape (C,) combined into the global ones."""
    c = mean.shape[0]
    n = torch.full((1,), float(count), dtype=torch.float64, device=mean.device)
    rows = _AllGatherRows.apply(torch.cat([n, mean.to(torch.float64), var.to(torch.float64)]), group)
    counts, means, variances = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
    total = counts.sum()
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
    return g_mean.to(mean.dtype), g_var.to(var.dtype), int(total.item())


def synchronize(bn: nn.Module, mean: Tensor, var: Tensor, count: int) -> Tuple[Tensor, Tensor, int]:
    """(mean, var, count) of the batch statistics `bn` normalizes with: all ranks' for an active
    nn.SyncBatchNorm (see sync_group), else the local ones unchanged."""
    group = sync_group(bn)
    if group is None:
        return mean, var, count
    return combine_stats(mean, var, count, group)
