"""--arch and --backend: which model the training command builds.

--backend fast builds resnet_fast.<arch>; --backend torchvision builds torchvision.models.<arch>, the
same module tree, initialization and state_dict (so one seed gives the same initial weights, and a
checkpoint of one backend loads into the other). The CIFAR-style nets (resnet20 ... resnet110,
plain20 ... plain110) have no torchvision definition: there, --backend torchvision runs resnet_fast's
own definition unfused -- every BatchNorm2d becomes an `UnfusedBatchNorm2d` (nn.BatchNorm2d under
another type), which resnet_fast's fusion test rejects, so every block takes its eager PyTorch
forward (aten conv, BatchNorm, ReLU, add) while parameters, buffers and state_dict stay the same.
"""

from typing import List

import torchvision
from torch import nn

import resnet_fast
from resnet_fast.sync_bn import convert_sync_batchnorm

from .errors import InputError

_PREFIXES = ("resnet", "resnext", "wide_resnet", "plain")


class UnfusedBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d, but not of type nn.BatchNorm2d: resnet_fast's blocks run it eagerly."""


class UnfusedSyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm, likewise run eagerly (torch's own synchronization)."""


def available_archs() -> List[str]:
    """Every model builder resnet_fast exports (torchvision's ten, and the CIFAR nets where present)."""
    return sorted(n for n in resnet_fast.__all__ if n.startswith(_PREFIXES) and callable(getattr(resnet_fast, n)))


def is_cifar_arch(arch: str) -> bool:
    """A CIFAR-style net (3 stages, 32x32 inputs): resnet_fast builds it, torchvision has none."""
    return arch in available_archs() and not hasattr(torchvision.models, arch)


def check_arch(arch: str) -> None:
    if arch not in available_archs():
        raise InputError(f"unknown --arch {arch!r}; choose one of: {', '.join(available_archs())}")


def _unfuse(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = UnfusedBatchNorm2d
        elif type(m) is nn.SyncBatchNorm:
            m.__class__ = UnfusedSyncBatchNorm
    return model


def build_model(arch: str, backend: str, num_classes: int, sync_bn: bool = False) -> nn.Module:
    """The --arch model; with sync_bn, BatchNorm statistics over all processes (resnet_fast's
    convert_sync_batchnorm for --backend fast, torch's nn.SyncBatchNorm for torchvision)."""
    check_arch(arch)
    if backend not in ("fast", "torchvision"):
        raise InputError(f"unknown --backend {backend!r}: use fast or torchvision")
    if backend == "torchvision" and hasattr(torchvision.models, arch):
        model = getattr(torchvision.models, arch)(num_classes=num_classes)
    else:
        model = getattr(resnet_fast, arch)(num_classes=num_classes)
    if sync_bn:  # DDP accepts nn.SyncBatchNorm on CUDA only; resnet_fast's SyncBatchNorm2d also on CPU
        model = (convert_sync_batchnorm(model) if backend == "fast" else nn.SyncBatchNorm.convert_sync_batchnorm(model))
    if backend == "torchvision" and not hasattr(torchvision.models, arch):
        _unfuse(model)
    return model
