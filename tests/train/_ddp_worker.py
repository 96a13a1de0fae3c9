"""One process of the 2-process gloo test (tests/train/test_ddp.py): a DDP step of a float64 resnet18.

    python _ddp_worker.py RANK WORLD INIT_FILE OUT_FILE

Runs four cases, each from the same initial weights:
  * "sync": resnet_fast.convert_sync_batchnorm + DDP, uneven shards of SIZES samples, loss = per-rank
    sum of cross-entropy * world / total, so DDP's gradient average is the mean loss of the batch;
  * "torch_sync": the same with nn.SyncBatchNorm.convert_sync_batchnorm (DDP refuses nn.SyncBatchNorm
    on CPU, so gradients are averaged by hand, as DDP would);
  * "eager_sync": a small non-resnet_fast net with convert_sync_batchnorm (SyncBatchNorm2d's own
    unfused forward; momentum and momentum=None);
  * "local": plain DDP, even shards, per-rank mean loss.
Saves the parameter gradients, buffers and logits of each case to OUT_FILE.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import resnet_fast

SIZES = {"sync": (5, 3), "torch_sync": (5, 3), "local": (4, 4), "eager_sync": (5, 3)}
NUM_CLASSES = 5


def make_model(case: str = "") -> nn.Module:
    torch.manual_seed(0)
    if case == "eager_sync":  # not a resnet_fast net: SyncBatchNorm2d's own (unfused) forward
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2),
                             nn.BatchNorm2d(4, momentum=None), nn.ReLU(), nn.Flatten(), nn.LazyLinear(NUM_CLASSES)
                             ).double()
    return resnet_fast.resnet18(num_classes=NUM_CLASSES).double()


def make_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64)
    return x, torch.randint(0, NUM_CLASSES, (8,), generator=g)


def shard(t: torch.Tensor, case: str, rank: int) -> torch.Tensor:
    return t.split(SIZES[case])[rank]


def run_case(case: str, rank: int, world: int) -> dict:
    model = make_model(case)
    if case == "eager_sync":
        model(make_batch()[0][:2])  # materializes the LazyLinear (same on every rank)
        model.apply(lambda m: m.reset_running_stats() if isinstance(m, nn.BatchNorm2d) else None)
    if case in ("sync", "eager_sync"):
        model = resnet_fast.convert_sync_batchnorm(model)
    elif case == "torch_sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    runner = model if case == "torch_sync" else DistributedDataParallel(model)
    x, y = make_batch()
    xs, ys = shard(x, case, rank), shard(y, case, rank)
    logits = runner(xs)
    if case == "local":
        loss = F.cross_entropy(logits, ys)
    else:
        loss = F.cross_entropy(logits, ys, reduction="sum") * world / x.shape[0]
    loss.backward()
    if case == "torch_sync":
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
    return {"grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "logits": logits.detach().clone(),
            "types": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})}


def main() -> None:
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({case: run_case(case, rank, world) for case in SIZES}, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
