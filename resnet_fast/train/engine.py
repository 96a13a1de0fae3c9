"""One training epoch, one evaluation, and the learning-rate schedule.

Metrics are sums over this process's images (loss, top-1 / top-5 hits, count), all-reduced over
processes before they are divided, so they are exact for any number of processes.
Schedules are per iteration (LambdaLR stepped after every optimizer step):
  step:    lr * 0.1^(number of --lr-steps epochs reached)     (He et al. 2015: /10 at 32k and 48k of 64k)
  cosine:  lr * (1 + cos(pi * t)) / 2, t from 0 to 1 over the epochs after warm-up
  warm-up: the first --warmup-epochs ramp linearly from lr / (warm-up iterations) to lr (either schedule).
"""

import math
import time
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .progress import Progress


def lr_lambda(schedule: str, epochs: int, iters_per_epoch: int, steps: Sequence[float], warmup_epochs: float):
    warm_iters = warmup_epochs * iters_per_epoch

    def factor(it: int) -> float:
        if it < warm_iters:
            return (it + 1) / warm_iters
        epoch = it / iters_per_epoch
        if schedule == "step":
            return 0.1 ** sum(epoch >= m for m in steps)
        t = (it - warm_iters) / max(1.0, epochs * iters_per_epoch - warm_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def _hits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Number of rows whose target is among the k largest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == target[:, None]).any(dim=1).sum()


def _to_device(images, target, device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return (images.to(device, non_blocking=True).contiguous(memory_format=fmt),
            target.to(device, non_blocking=True))


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, scaler, device: torch.device,
                    amp_dtype: Optional[torch.dtype], channels_last: bool, progress: Progress) -> Dict[str, float]:
    """SGD over one epoch; returns the mean training loss and top-1 accuracy (%) measured on the fly
    (train-mode forward, as the training-error curves of He et al. are), images/s and seconds."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, top-1 hits, n
    start = time.perf_counter()
    for images, target in loader:
        images, target = _to_device(images, target, device, channels_last)
        with _autocast(device, amp_dtype):
            logits = model(images)
            loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = target.shape[0]
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * n, _hits(logits, target, 1).double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
        progress.update(n * distributed.world_size(), loss.detach())
    seconds = time.perf_counter() - start
    loss_sum, top1, n = distributed.all_reduce_sum(sums).tolist()
    if not math.isfinite(loss_sum):
        raise FloatingPointError("the training loss is not finite (diverged); try a lower --lr or --amp off")
    return {"train_loss": loss_sum / n, "train_top1": 100.0 * top1 / n, "images_per_s": n / seconds,
            "epoch_seconds": seconds}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype],
             channels_last: bool) -> Dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) over the whole val set (every process its shard)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, n
    for images, target in loader:
        images, target = _to_device(images, target, device, channels_last)
        with _autocast(device, amp_dtype):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        sums += torch.stack([loss.double(), _hits(logits, target, 1).double(), _hits(logits, target, 5).double(),
                             torch.tensor(float(target.shape[0]), dtype=torch.float64, device=device)])
    loss_sum, top1, top5, n = distributed.all_reduce_sum(sums).tolist()
    return {"val_loss": loss_sum / n, "val_top1": 100.0 * top1 / n, "val_top5": 100.0 * top5 / n}
