"""resnet_fast: drop-in torchvision ResNets on fused conv-BatchNorm-ReLU ops.

    import resnet_fast
    model = resnet_fast.resnet50()            # same constructor and state_dict as torchvision's
    resnet_fast.backend_info()                # which kernels serve the ops here
    with resnet_fast.use_backend("reference"):  # force a backend (reference | native | triton)
        ...
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)


from . import ops  # noqa: F401  (registers torch.ops.resnet_fast)
from ._dispatch import backend_info, use_backend, use_engine
from .sync_bn import SyncBatchNorm2d, convert_sync_batchnorm
from .builders import (
    from_torchvision,
    to_torchvision,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from .inference import InferenceResNet, optimize_for_inference
from .cifar import (
    CifarResNet,
    plain20,
    plain32,
    plain44,
    plain56,
    plain110,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut

__all__ = [
    "optimize_for_inference", "InferenceResNet", "convert_sync_batchnorm", "SyncBatchNorm2d",
    "ResNet", "BasicBlock", "Bottleneck", "backend_info", "use_backend", "use_engine", "from_torchvision", "to_torchvision",
    "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
    "wide_resnet101_2", "ZeroPadShortcut", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56",
    "resnet110", "plain20", "plain32", "plain44", "plain56", "plain110",
]
