"""Builders with torchvision's signatures, and conversion of an existing torchvision model.

`weights=` takes torchvision's enums (or their names as strings, or `pretrained=True` through
torchvision's legacy interface) and loads through torchvision's own weight machinery.
"""

from typing import Any, Dict, Optional

from torch import nn
from torchvision.models import resnet as tv
from torchvision.models._utils import _ovewrite_named_param, handle_legacy_interface

from .resnet import BasicBlock, Bottleneck, ResNet, _rebind, to_torchvision  # noqa: F401

__all__ = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "from_torchvision", "to_torchvision",
]


def _resnet(block, layers, weights, progress: bool, overrides: Dict[str, int], **kwargs: Any) -> ResNet:
    for name, value in overrides.items():
        _ovewrite_named_param(kwargs, name, value)
    if weights is not None:
        if kwargs.get("shortcut") not in (None, "B") or kwargs.get("residual", True) is not True:
            raise ValueError(f"torchvision's weights are for shortcut='B', residual=True; got "
                             f"shortcut={kwargs.get('shortcut')!r}, residual={kwargs.get('residual', True)!r}")
        _ovewrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


def _builder(name: str, block, layers, enum, **overrides: int):
    @handle_legacy_interface(weights=("pretrained", enum.IMAGENET1K_V1))
    def build(*, weights: Optional[tv.WeightsEnum] = None, progress: bool = True, **kwargs: Any) -> ResNet:
        return _resnet(block, layers, enum.verify(weights), progress, overrides, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"resnet_fast's {name}: torchvision.models.{name}'s signature, module tree, state_dict and "
                     f"initialization, fused forward. `weights`: a torchvision.models.{enum.__name__} or its name. "
                     f"`shortcut=` / `residual=`: the paper's variants (see resnet_fast.ResNet).")
    return build


resnet18 = _builder("resnet18", BasicBlock, [2, 2, 2, 2], tv.ResNet18_Weights)
resnet34 = _builder("resnet34", BasicBlock, [3, 4, 6, 3], tv.ResNet34_Weights)
resnet50 = _builder("resnet50", Bottleneck, [3, 4, 6, 3], tv.ResNet50_Weights)
resnet101 = _builder("resnet101", Bottleneck, [3, 4, 23, 3], tv.ResNet101_Weights)
resnet152 = _builder("resnet152", Bottleneck, [3, 8, 36, 3], tv.ResNet152_Weights)
resnext50_32x4d = _builder("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], tv.ResNeXt50_32X4D_Weights,
                           groups=32, width_per_group=4)
resnext101_32x8d = _builder("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], tv.ResNeXt101_32X8D_Weights,
                            groups=32, width_per_group=8)
resnext101_64x4d = _builder("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], tv.ResNeXt101_64X4D_Weights,
                            groups=64, width_per_group=4)
wide_resnet50_2 = _builder("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], tv.Wide_ResNet50_2_Weights,
                           width_per_group=128)
wide_resnet101_2 = _builder("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], tv.Wide_ResNet101_2_Weights,
                            width_per_group=128)


_BLOCKS = {tv.BasicBlock: BasicBlock, tv.Bottleneck: Bottleneck}


def from_torchvision(model: tv.ResNet) -> ResNet:
    """A resnet_fast ResNet sharing `model`'s parameters and buffers (the original stays usable).

    Blocks of torchvision's exact BasicBlock / Bottleneck classes run fused where their modules are a
    plain nn.Conv2d + nn.BatchNorm2d; any other block (a custom class, a custom norm_layer such as
    FrozenBatchNorm2d or GroupNorm) runs its own unfused forward. Raises TypeError for a model that is
    not a torchvision ResNet or that overrides its forward."""
    if isinstance(model, ResNet):
        return model
    if not isinstance(model, tv.ResNet):
        raise TypeError(f"from_torchvision expects a torchvision.models.ResNet, got {type(model).__name__}")
    cls = type(model)
    if cls.forward is not tv.ResNet.forward or cls._forward_impl is not tv.ResNet._forward_impl:
        raise TypeError(f"from_torchvision cannot convert {cls.__name__}: it overrides ResNet's forward")
    new = _rebind(model, ResNet)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, name)
        blocks = [_rebind(b, _BLOCKS[type(b)]) if type(b) in _BLOCKS else b for b in layer]
        new._modules[name] = nn.Sequential(*blocks)
    return new
