"""Shared setup for `pytest benchmarks/ --benchmark-only`: the device, its sizes, timing helpers."""

import datetime
import platform

import pytest
import torch

import resnet_fast

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# Inference: (batch, image size); training step: (batch, image size). CPU sizes finish in minutes.
INFER_SHAPE = (64, 224) if CUDA else (8, 224)
TRAIN_SHAPE = (64, 224) if CUDA else (4, 160)
DTYPE = torch.bfloat16 if CUDA else torch.float32

_medians = {}


def sync():
    if CUDA:
        torch.cuda.synchronize()


def environment():
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name() if CUDA else (platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "resnet_fast_backend": resnet_fast.backend_info(),
        "date": datetime.date.today().isoformat(),
    }


def record(benchmark, key, impl, images):
    """extra_info: images/s from the median, speedup over torchvision eager (timed first), memory."""
    median = benchmark.stats.stats.median
    _medians[(key, impl)] = median
    info = benchmark.extra_info
    info.update(environment())
    info["impl"] = impl
    info["images_per_s"] = images / median
    base = _medians.get((key, "torchvision"))
    if base is not None:
        info["speedup_vs_torchvision"] = base / median
    if CUDA:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()


@pytest.fixture
def device():
    return DEVICE
