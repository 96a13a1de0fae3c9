"""Glue between torchvision-shaped modules and the resnet_fast ops.

A conv -> BatchNorm -> [ReLU] unit runs in one of two ways, chosen per BatchNorm exactly as
nn.BatchNorm2d chooses between batch and running statistics:
  * batch statistics (training, or no running stats): conv_bn_stats + bn_finalize, and the result is
    left *pending*: a `Pending(y, mean, scale, bias, relu)` whose value act((y - mean)*scale + bias) is
    applied by whoever consumes it (the next conv's prologue or the block end), never written alone;
  * running statistics (eval): BatchNorm folded into the conv (cached, refolded when any of the
    tensors involved changes) and conv_bias_act with the residual and ReLU in its epilogue.
Running-statistics updates are deferred: they are collected in a list during the forward pass and
applied by `apply_updates` once it has succeeded, so an input that fails half way leaves every
running_mean / running_var / num_batches_tracked untouched (resnet_fast.interop collects them
across the blocks of a model forward).
The fold cache is not part of a module's state: pickling, torch.save and deepcopy drop it.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _dispatch, bn_math, bn_ops, conventions, ops, sync_bn

_FOLD_ATTR = "_resnet_fast_folded"


class Pending(NamedTuple):
    """An activation act((y - mean)*scale + bias) not yet written; scale None means it is just y."""
    y: Tensor
    mean: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    relu: bool = False


class StatsUpdate(NamedTuple):
    bn: nn.BatchNorm2d
    mean: Tensor
    var: Tensor
    count: int


def materialize(a: Pending) -> Tensor:
    if a.scale is None:
        return a.y
    return ops.bn_act(a.y, a.mean, a.scale, a.bias, None, None, None, None, a.relu)


def uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def is_fusable(conv: nn.Module, bn: nn.Module) -> bool:
    """Only plain nn.Conv2d (no bias, zero padding) followed by a plain nn.BatchNorm2d (or nn.SyncBatchNorm /
    sync_bn.SyncBatchNorm2d: statistics over all processes) fuse."""
    return (type(conv) is nn.Conv2d and conv.bias is None and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple)
            and type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm, sync_bn.SyncBatchNorm2d))


def _conv_args(conv: nn.Conv2d):
    return list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups


class _FoldCache:
    """(key, folded weight, folded bias) kept on a conv; pickles (torch.save, deepcopy) as empty."""

    __slots__ = ("key", "weight", "bias")

    def __init__(self, key=None, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> None:
        self.key, self.weight, self.bias = key, weight, bias

    def __reduce__(self):
        return (_FoldCache, ())


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, like: Tensor) -> Tuple[Tensor, Tensor]:
    """conv's weight and bias with eval-mode bn folded in, for inputs like `like`.

    Cached on the conv while nothing it depends on changes (data pointer and version counter of
    every tensor involved); recomputed, differentiably, whenever autograd needs it."""
    fmt = conventions.memory_format_of(like)
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors[:3])
    # Under torch.compile or CUDA-graph capture the fold must be part of what is traced / recorded:
    # a replay never runs this Python check, so a cached fold would go stale when weights change.
    # (is_compiling first: dynamo folds it to True and never traces the capture query.) torch.jit.trace
    # records the fold on every call too, so that every trace of the model is the same graph.
    if torch.compiler.is_compiling() or needs_grad or torch.jit.is_tracing() or (
            like.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        w, b = bn_math.fold_bn(conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        return w.contiguous(memory_format=fmt), b
    key = (tuple(None if t is None else (t.data_ptr(), t._version, t.device) for t in tensors), bn.eps, fmt)
    cached = conv.__dict__.get(_FOLD_ATTR)
    if cached is not None and cached.key == key:
        return cached.weight, cached.bias
    with torch.no_grad():
        w, b = bn_math.fold_bn(conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        w = w.contiguous(memory_format=fmt)
    conv.__dict__[_FOLD_ATTR] = _FoldCache(key, w, b)
    return w, b


def clear_folded(module: nn.Module) -> None:
    """Drops every cached folded weight under module (done on each train()/eval() switch)."""
    for m in module.modules():
        m.__dict__.pop(_FOLD_ATTR, None)


def conv_bn(a: Pending, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, updates: List[StatsUpdate],
            residual: Optional[Pending] = None) -> Pending:
    """bn(conv(a)) [+ residual] [then ReLU]; the result may be pending (batch statistics).

    With a residual, the block end: act(bn(conv(a)) + residual) is materialized in one pass."""
    stride, padding, dilation, groups = _conv_args(conv)
    cast = autocast_dtype(a.y)
    if not uses_batch_stats(bn):
        x = _cast(materialize(a), cast)
        w, b = folded(conv, bn, x)
        res = _cast(materialize(residual), x.dtype) if residual is not None else None
        # The folded shift stays in float32 under autocast (eager applies BatchNorm in float32 too).
        w, b = _cast(w, x.dtype), _cast(b, conventions.stat_dtype(x.dtype) if cast is not None else x.dtype)
        return Pending(ops.conv_bias_act_call(x, w, b, res, relu, stride, padding, dilation, groups))
    if _dispatch.training_style(a.y.device.type) == "materialized" and type(bn) is nn.BatchNorm2d:
        return _conv_bn_materialized(a, conv, bn, relu, updates, residual, cast, (stride, padding, dilation, groups))
    x = _cast(a.y, cast)
    y, mean, var = ops.conv_bn_stats(x, a.mean, a.scale, a.bias, a.relu, _cast(conv.weight, x.dtype), stride, padding,
                                     dilation, groups)
    if residual is not None:
        residual = residual._replace(y=_cast(residual.y, y.dtype))
    count = y.numel() // y.shape[1]
    mean, var, count = sync_bn.synchronize(bn, mean, var, count)  # all ranks' statistics for SyncBatchNorm
    if not torch.jit.is_tracing() and count <= 1:  # (a traced count is a tensor: no Python branch on it)
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}")
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        updates.append(StatsUpdate(bn, mean.detach(), var.detach(), count))
    scale = ops.bn_finalize(var, bn.weight, bn.eps)
    bias = bn.bias.to(scale.dtype) if bn.bias is not None else torch.zeros_like(scale)
    if residual is None:
        return Pending(y, mean, scale, bias, relu)
    if residual.scale is None:
        return Pending(ops.bn_act(y, mean, scale, bias, residual.y, None, None, None, relu))
    torch._check(not residual.relu, lambda: "a pending residual must not carry a ReLU")
    return Pending(ops.bn_act(y, mean, scale, bias, residual.y, residual.mean, residual.scale, residual.bias, relu))


def _conv_bn_materialized(a: Pending, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, updates: List[StatsUpdate],
                          residual: Optional[Pending], cast: Optional[torch.dtype], conv_args) -> Pending:
    """Batch statistics where the conv cannot take a prologue: aten's convolution, then BatchNorm (+ residual)
    (+ ReLU) written once by batch_norm_act (a plain nn.BatchNorm2d; SyncBatchNorm takes the pending path)."""
    stride, padding, dilation, groups = conv_args
    x = _cast(materialize(a), cast)
    y = _dispatch.train_conv(x, _cast(conv.weight, x.dtype), stride, padding, dilation, groups)
    res = _cast(materialize(residual), y.dtype) if residual is not None else None
    count = y.numel() // y.shape[1]
    if not torch.jit.is_tracing() and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}")
    mean, var = bn_ops.batch_stats_call(y.detach())  # no gradient
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        updates.append(StatsUpdate(bn, mean, var, count))  # before the op that saves tensors (checkpoint)
    return Pending(bn_ops.batch_norm_act_call(y, mean, var, bn.weight, bn.bias, res, bn.eps, relu))


def autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast would run a convolution of t in, or None (autocast off, float64)."""
    dev = t.device.type
    if dev not in ("cpu", "cuda") or t.dtype == torch.float64 or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _cast(t: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """Under autocast the ops see the conv's dtype explicitly (custom ops are not autocast-aware)."""
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def apply_updates(updates: List[StatsUpdate]) -> None:
    """The running-statistics updates, in order. In plain eager (real tensors, nothing tracing) those with a
    momentum go through bn_math.update_running_stats_many at once (the same arithmetic, batched: a model's 53
    update ops cost ~1% of a CPU training step); under torch.compile / tracing each is the op."""
    batch = [u for u in updates if u.bn.momentum is not None and ops.plain_eager(u.mean)
             and type(u.bn.running_mean) is Tensor] if len(updates) > 1 else []
    if batch:
        bn_math.update_running_stats_many(
            [u.bn.running_mean for u in batch], [u.bn.running_var for u in batch],
            [u.bn.num_batches_tracked for u in batch], [u.mean for u in batch], [u.var for u in batch],
            [u.count for u in batch], [u.bn.momentum for u in batch])
    batched = {id(u) for u in batch}
    for u in updates:
        if id(u) not in batched:
            ops.update_running_stats(u.bn.running_mean, u.bn.running_var, u.bn.num_batches_tracked, u.mean, u.var,
                                     u.count, u.bn.momentum)
    updates.clear()
