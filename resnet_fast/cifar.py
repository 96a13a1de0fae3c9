"""The seed paper's CIFAR-10 nets (He et al. 2015, section 4.2) on resnet_fast's fused ops.

A 6n+2-layer net: conv3x3(3 -> 16) - BN - ReLU (no max-pool), three stages of n BasicBlocks with
16, 32 and 64 channels (stride 2 in the first block of stages 2 and 3: 32x32 -> 32, 16, 8 for
CIFAR images), global average pooling and a linear layer; 6n + 2 weighted layers. The shortcuts
are option A by default (identity; where the shape changes, x[:, :, ::2, ::2] with zero channels
appended: no parameters), as in the paper's CIFAR experiments. `plain20` ... `plain110` are the
same stacks without shortcuts. Module names follow torchvision's (conv1, bn1,
layer{1,2,3}.{i}.conv{1,2} / bn{1,2} [/ downsample.0/1 with shortcut "B" or "C"], fc).
"""

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .resnet import BasicBlock, _FusedNet, check_shortcut, make_stage

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "plain20", "plain32", "plain44", "plain56", "plain110"]

WIDTHS = (16, 32, 64)


class CifarResNet(_FusedNet, nn.Module):
    """The paper's CIFAR ResNet of `depth` = 6n + 2 layers (20, 32, 44, 56, 110, 1202, ...).

    shortcut: "A" (default), "B" or "C", as in resnet_fast.ResNet; residual=False gives the plain
    net (shortcut then unset). Initialization: Kaiming normal (fan_out, ReLU gain) for every conv,
    BatchNorm weight 1 and bias 0, nn.Linear's default for fc; zero_init_residual=True zeroes each
    block's last BatchNorm weight, as torchvision's option does."""

    def __init__(self, depth: int = 20, num_classes: int = 10, *, shortcut: Optional[str] = None,
                 residual: bool = True, zero_init_residual: bool = False,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        kind = check_shortcut(shortcut, residual, "A", zero_init_residual)
        super().__init__()
        self.depth, self.shortcut, self.residual = depth, kind, residual
        norm_layer = norm_layer or nn.BatchNorm2d
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(BasicBlock, WIDTHS[0], WIDTHS[0], n, 1, kind, norm_layer)
        self.layer2 = make_stage(BasicBlock, WIDTHS[0], WIDTHS[1], n, 2, kind, norm_layer)
        self.layer3 = make_stage(BasicBlock, WIDTHS[1], WIDTHS[2], n, 2, kind, norm_layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(WIDTHS[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self._transaction(self._run, x)

    def _run(self, x: Tensor) -> Tensor:
        x = self._stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, shortcut={self.shortcut!r}, residual={self.residual}"


def _builder(name: str, depth: int, residual: bool):
    def build(**kwargs: Any) -> CifarResNet:
        return CifarResNet(depth, residual=residual, **kwargs)

    build.__name__ = build.__qualname__ = name
    kind = "ResNet (option A shortcuts by default)" if residual else "plain net (no shortcuts)"
    build.__doc__ = (f"The paper's {depth}-layer CIFAR {kind}; num_classes=10 by default. "
                     f"Keyword arguments as CifarResNet's.")
    return build


resnet20 = _builder("resnet20", 20, True)
resnet32 = _builder("resnet32", 32, True)
resnet44 = _builder("resnet44", 44, True)
resnet56 = _builder("resnet56", 56, True)
resnet110 = _builder("resnet110", 110, True)
plain20 = _builder("plain20", 20, False)
plain32 = _builder("plain32", 32, False)
plain44 = _builder("plain44", 44, False)
plain56 = _builder("plain56", 56, False)
plain110 = _builder("plain110", 110, False)
