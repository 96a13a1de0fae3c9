"""torchvision's ResNet family on resnet_fast's fused ops.

The classes subclass torchvision's, so construction (module tree, parameter names, initialization
and its order, zero_init_residual, groups / width_per_group, dilation, norm_layer) *is* torchvision's;
only forward differs. A state_dict moves both ways unchanged, and isinstance checks against
torchvision's classes keep working.

forward is torchvision's too, in structure: every submodule torchvision calls (stem modules aside,
see resnet_fast.fused_net) is called through its __call__, so hooks, wrappers and replaced stages
behave as in torchvision. A block fuses when it is built from plain nn.Conv2d + nn.BatchNorm2d
(torchvision's default) and nothing observes its inner modules (resnet_fast.interop: hooks there,
TorchScript, ONNX export, torch.func make it run torchvision's own, unfused forward); a block with
any other norm layer or conv (a custom norm_layer, FrozenBatchNorm2d) runs unfused too.

The seed paper's shortcut options (He et al. 2015, section 4.1) are constructor arguments:
`shortcut="B"` (the default) is torchvision's model exactly; `"A"` and `"C"` and the "plain" nets
(`residual=False`) change the module tree as described in `ResNet`.
"""

from typing import Callable, List, Optional

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from . import interop
from .functional import Pending, StatsUpdate, conv_bn, is_fusable, materialize
from .fused_net import _FusedNet, _check_input, stem_forward  # noqa: F401  (part of this module's API)
from .shortcuts import SHORTCUTS, ZeroPadShortcut, check_shortcut, make_shortcut  # noqa: F401


def _downsample_pair(ds: Optional[nn.Module]):
    if ds is None or type(ds) is ZeroPadShortcut:
        return None
    if isinstance(ds, nn.Sequential) and len(ds) == 2 and is_fusable(ds[0], ds[1]):
        return ds[0], ds[1]
    return False


class _FusedBlock:
    """Shared forward of BasicBlock and Bottleneck: a chain of conv-BN-ReLU units and a block end.

    residual=False (an instance attribute set by `make_stage`) is the paper's "plain" block: the
    last unit ends in BN -> ReLU with nothing added. When the block cannot or must not fuse
    (resnet_fast.interop: other module types, hooks inside it, TorchScript / ONNX / torch.func) it runs
    torchvision's forward, `tv_forward`."""

    residual = True

    def _units(self):
        raise NotImplementedError

    def _fusable(self) -> bool:
        units = self._units()
        ds = _downsample_pair(self.downsample)
        inner = [m for unit in units for m in unit] + [self.relu]
        if ds:
            inner += [self.downsample, *ds]
        return (type(self.relu) is nn.ReLU and all(is_fusable(c, b) for c, b in units) and ds is not False
                and not interop.observed(inner))

    def _shortcut(self, x: Tensor, updates: List[StatsUpdate]) -> Optional[Pending]:
        if not self.residual:
            return None
        ds = _downsample_pair(self.downsample)
        if ds is not None:  # option B / C projection: its BN is applied at the block end (dual BN)
            return conv_bn(Pending(x), ds[0], ds[1], False, updates)
        return Pending(x if self.downsample is None else self.downsample(x))

    def _forward_fused(self, x: Tensor, updates: List[StatsUpdate]) -> Tensor:
        units = self._units()
        residual = self._shortcut(x, updates)
        a = Pending(x)
        for conv, bn in units[:-1]:
            a = conv_bn(a, conv, bn, True, updates)
        return materialize(conv_bn(a, *units[-1], True, updates, residual=residual))

    def extra_repr(self) -> str:
        return "" if self.residual else "residual=False"

    def forward(self, x: Tensor) -> Tensor:
        if not (interop.fusion_allowed() and self._fusable()):
            return tv_forward(self, x)
        if interop.is_proxy(x):
            return interop.fx_leaf(self, x)
        updates = interop.collector()  # the enclosing model forward's transaction, or applied at once
        out = self._forward_fused(x, updates)
        interop.flush(updates)
        return out

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script scripts torchvision's block over the same modules (it runs unfused); a
        subclass with its own forward is scripted as it is."""
        return scriptable_block(self) if type(self).forward is _FusedBlock.forward else self


def scriptable_block(block: nn.Module) -> nn.Module:
    if not getattr(block, "residual", True) or type(block.downsample) is ZeroPadShortcut:
        raise TypeError("torch.jit.script supports torchvision's blocks (shortcut='B', residual=True); script "
                        "other variants with torch.jit.trace or torch.export instead")
    return _rebind(block, tv.Bottleneck if isinstance(block, tv.Bottleneck) else tv.BasicBlock)


def _rebind(module: nn.Module, cls: type) -> nn.Module:
    """A new `cls` instance over the same parameters, buffers and children as `module`."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for registry in ("_parameters", "_buffers", "_modules"):
        new.__dict__[registry] = dict(module.__dict__[registry])
    return new


def tv_forward(block: nn.Module, x: Tensor) -> Tensor:
    """torchvision's own (unfused) forward of a block; for a plain block, the same without the add."""
    if not getattr(block, "residual", True):
        for conv, bn in block._units():
            x = block.relu(bn(conv(x)))
        return x
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


def make_stage(block: type, inplanes: int, planes: int, blocks: int, stride: int, shortcut: Optional[str],
               norm_layer: Callable[[int], nn.Module], groups: int = 1, base_width: int = 64, dilation: int = 1,
               first_dilation: int = 1) -> nn.Sequential:
    """torchvision's ResNet._make_layer with a shortcut option (None: plain blocks)."""
    if shortcut is None and not issubclass(block, _FusedBlock):
        raise TypeError(f"plain nets need resnet_fast's BasicBlock or Bottleneck, got {block.__name__}")
    outplanes = planes * block.expansion
    layers = []
    for i in range(blocks):
        cin, s, d = (inplanes, stride, first_dilation) if i == 0 else (outplanes, 1, dilation)
        b = block(cin, planes, s, make_shortcut(shortcut, cin, outplanes, s, norm_layer), groups, base_width, d,
                  norm_layer)
        if shortcut is None:
            b.residual = False
        layers.append(b)
    return nn.Sequential(*layers)


class ResNet(_FusedNet, tv.ResNet):
    """torchvision.models.ResNet with fused conv-BN-ReLU forward; same constructor and state_dict.

    Keyword-only `shortcut` and `residual` select the seed paper's variants:
      * shortcut="B" (the default): 1x1 conv + BN projection where the shape changes: torchvision's
        model, module names, initialization and state_dict exactly;
      * shortcut="A": x[:, :, ::s, ::s] with zero channels appended where the shape changes
        (`ZeroPadShortcut` as the block's parameterless `downsample`; no `downsample.*` keys);
      * shortcut="C": a projection on every block (`downsample.0/1` in every block);
      * residual=False: the "plain" net, same stacks without any shortcut (each block ends in
        BN -> ReLU); shortcut must then be left unset, and zero_init_residual False."""

    shortcut: Optional[str] = "B"
    residual = True

    def __init__(self, block, layers: List[int], num_classes: int = 1000, zero_init_residual: bool = False,
                 groups: int = 1, width_per_group: int = 64, replace_stride_with_dilation: Optional[List[bool]] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, *, shortcut: Optional[str] = None,
                 residual: bool = True) -> None:
        self.shortcut = check_shortcut(shortcut, residual, "B", zero_init_residual)  # read by _make_layer
        self.residual = residual
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if self.shortcut == "B":
            return super()._make_layer(block, planes, blocks, stride, dilate)  # torchvision's own
        first_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        layer = make_stage(block, self.inplanes, planes, blocks, stride, self.shortcut, self._norm_layer, self.groups,
                           self.base_width, self.dilation, first_dilation)
        self.inplanes = planes * block.expansion
        return layer

    def _forward_impl(self, x: Tensor) -> Tensor:
        return self._transaction(self._run, x)

    def _run(self, x: Tensor) -> Tensor:
        """torchvision's ResNet._forward_impl, every submodule called through its __call__."""
        x = self._stem(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script scripts torchvision's ResNet over the same parameters and buffers (unfused)."""
        return to_torchvision(self)


def to_torchvision(model: "ResNet") -> tv.ResNet:
    """A torchvision.models.ResNet (torchvision's classes and forward) sharing `model`'s parameters and
    buffers: what torch.jit.script compiles; the inverse of from_torchvision. Containers are copied
    (shallowly), so changes to the result's module tree leave `model`'s alone."""
    if type(model)._forward_impl is not ResNet._forward_impl or type(model).forward is not tv.ResNet.forward:
        raise TypeError(f"to_torchvision cannot convert {type(model).__name__}: it overrides ResNet's forward")
    return _unfused_tree(model, tv.ResNet)


def _unfused_tree(module: nn.Module, cls: Optional[type] = None) -> nn.Module:
    if isinstance(module, _FusedBlock) and type(module).forward is _FusedBlock.forward:
        return scriptable_block(module)
    if not module._modules:
        return module
    new = _rebind(module, cls or type(module))
    for name, child in module._modules.items():
        new._modules[name] = None if child is None else _unfused_tree(child)
    return new
