"""torchrun support: process group set-up from torchrun's environment, and the few collectives used.

`torchrun --nproc_per_node=N -m resnet_fast.train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; with WORLD_SIZE > 1 the command joins the group (NCCL on CUDA, gloo on CPU) and
each process drives cuda:LOCAL_RANK (or the CPU). Without torchrun everything here is a no-op.
"""

import os
from typing import Any, List

import torch
import torch.distributed as dist

from .errors import InputError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> "tuple[torch.device, bool]":
    """(the device this process trains on, whether this call created the process group)."""
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown --device {device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    return (torch.device("cuda", local_rank if is_distributed() else torch.cuda.current_device())
            if use_cuda else torch.device("cpu")), created


def cleanup(created: bool) -> None:
    if created and is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's obj, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank: without --sync-bn each rank's
    running statistics come from its own batches; evaluation and the checkpoint use rank 0's."""
    if is_distributed():
        for b in model.buffers():
            dist.broadcast(b, 0)
