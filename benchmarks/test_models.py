"""Model-level throughput: resnet_fast against torchvision eager on the present device, same
dtype and memory format (channels_last), same weights and data.

    pytest benchmarks/ --benchmark-only [--benchmark-json out.json]

CPU: float32, inference batch 8 at 224x224, training step batch 4 at 160x160.
GPU: bfloat16 autocast, batch 64 at 224x224 (the benchmark issue grows this)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast
from conftest import CUDA, DEVICE, DTYPE, INFER_SHAPE, TRAIN_SHAPE, record, sync

IMPLS = ["torchvision", "resnet_fast"]  # torchvision first: its median is the speedup's base


def build(impl, arch="resnet50"):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    if impl == "resnet_fast":
        model = resnet_fast.from_torchvision(model)
    return model.to(DEVICE).to(memory_format=torch.channels_last)


def autocast():
    return torch.autocast("cuda", dtype=DTYPE) if CUDA else torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_resnet50_inference(benchmark, impl):
    batch, size = INFER_SHAPE
    model = build(impl).eval()
    x = torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), autocast():
            model(x)
        sync()

    step()  # warm-up: folding, autotuning and allocations stay outside the timed region
    benchmark.pedantic(step, rounds=5 if not CUDA else 30, warmup_rounds=1)
    record(benchmark, "resnet50_inference", impl, batch)


@pytest.mark.parametrize("impl", IMPLS)
def test_resnet50_train_step(benchmark, impl):
    batch, size = TRAIN_SHAPE
    model = build(impl).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,), device=DEVICE)

    def step():
        with autocast():
            loss = F.cross_entropy(model(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    step()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=3 if not CUDA else 20, warmup_rounds=1)
    record(benchmark, "resnet50_train_step", impl, batch)
