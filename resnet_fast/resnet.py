"""torchvision's ResNet family on resnet_fast's fused ops.

The classes subclass torchvision's, so construction (module tree, parameter names, initialization
and its order, zero_init_residual, groups / width_per_group, dilation, norm_layer) *is* torchvision's;
only forward differs. A state_dict moves both ways unchanged, and isinstance checks against
torchvision's classes keep working.

Fused forward applies to blocks built from plain nn.Conv2d + nn.BatchNorm2d (torchvision's default);
a block with any other norm layer or conv (e.g. a custom norm_layer, FrozenBatchNorm2d) runs
torchvision's own, unfused forward. Forward hooks on the inner conv / bn modules do not fire on the
fused path (they are parameter holders there).
"""

from typing import List, Optional

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from .functional import Pending, StatsUpdate, apply_updates, clear_folded, conv_bn, is_fusable, materialize


def _downsample_pair(ds: Optional[nn.Module]):
    if ds is None:
        return None
    if isinstance(ds, nn.Sequential) and len(ds) == 2 and is_fusable(ds[0], ds[1]):
        return ds[0], ds[1]
    return False


class _FusedBlock:
    """Shared forward of BasicBlock and Bottleneck: a chain of conv-BN-ReLU units and a block end."""

    def _units(self):
        raise NotImplementedError

    def _fusable(self) -> bool:
        units = self._units()
        return (type(self.relu) is nn.ReLU and all(is_fusable(c, b) for c, b in units)
                and _downsample_pair(self.downsample) is not False)

    def _forward_fused(self, x: Tensor, updates: List[StatsUpdate]) -> Tensor:
        if not self._fusable():
            return tv_forward(self, x)
        units = self._units()
        ds = _downsample_pair(self.downsample)
        residual = Pending(x) if ds is None else conv_bn(Pending(x), ds[0], ds[1], False, updates)
        a = Pending(x)
        for conv, bn in units[:-1]:
            a = conv_bn(a, conv, bn, True, updates)
        return conv_bn(a, *units[-1], True, updates, residual=residual).y

    def forward(self, x: Tensor) -> Tensor:
        updates: List[StatsUpdate] = []
        out = self._forward_fused(x, updates)
        apply_updates(updates)
        return out


def tv_forward(block: nn.Module, x: Tensor) -> Tensor:
    """torchvision's own (unfused) forward of a block."""
    base = tv.Bottleneck if isinstance(block, tv.Bottleneck) else tv.BasicBlock
    return base.forward(block, x)


class BasicBlock(_FusedBlock, tv.BasicBlock):
    """torchvision.models.resnet.BasicBlock with a fused forward."""

    def _units(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


class Bottleneck(_FusedBlock, tv.Bottleneck):
    """torchvision.models.resnet.Bottleneck with a fused forward."""

    def _units(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


def _check_input(x: Tensor, model: "ResNet") -> None:
    w = model.conv1.weight
    if not isinstance(x, Tensor):
        raise TypeError(f"ResNet input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"ResNet input must be 4-D (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"ResNet input must have {w.shape[1]} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"ResNet input must be floating point, got {x.dtype}")
    if x.device != w.device:
        raise RuntimeError(f"ResNet input is on {x.device} but the model is on {w.device}")
    if x.dtype != w.dtype:
        raise TypeError(f"ResNet input dtype {x.dtype} differs from the model's {w.dtype}; "
                        f"use model.to({x.dtype}) or x.to({w.dtype})")
    if x.shape[0] == 0 and model.training:
        raise ValueError("ResNet input is an empty batch: batch statistics of zero samples are undefined in "
                         "training mode")


class ResNet(tv.ResNet):
    """torchvision.models.ResNet with fused conv-BN-ReLU forward; same constructor and state_dict.

    `memory_format` (default channels_last) is the layout activations run in; the input is
    converted once, the result is the same."""

    memory_format = torch.channels_last

    def train(self, mode: bool = True) -> "ResNet":
        clear_folded(self)
        return super().train(mode)

    def _forward_impl(self, x: Tensor) -> Tensor:
        _check_input(x, self)
        x = x.contiguous(memory_format=self.memory_format)
        updates: List[StatsUpdate] = []
        if is_fusable(self.conv1, self.bn1) and type(self.relu) is nn.ReLU:
            x = materialize(conv_bn(Pending(x), self.conv1, self.bn1, True, updates))
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block._forward_fused(x, updates) if isinstance(block, _FusedBlock) else block(x)
        apply_updates(updates)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)
