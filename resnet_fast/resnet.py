"""torchvision's ResNet family on resnet_fast's fused ops.

The classes subclass torchvision's, so construction (module tree, parameter names, initialization
and its order, zero_init_residual, groups / width_per_group, dilation, norm_layer) *is* torchvision's;
only forward differs. A state_dict moves both ways unchanged, and isinstance checks against
torchvision's classes keep working.

Fused forward applies to blocks built from plain nn.Conv2d + nn.BatchNorm2d (torchvision's default);
a block with any other norm layer or conv (e.g. a custom norm_layer, FrozenBatchNorm2d) runs
torchvision's own, unfused forward. Forward hooks on the inner conv / bn modules do not fire on the
fused path (they are parameter holders there).

The seed paper's shortcut options (He et al. 2015, section 4.1) are constructor arguments:
`shortcut="B"` (the default) is torchvision's model exactly; `"A"` and `"C"` and the "plain" nets
(`residual=False`) change the module tree as described in `ResNet`.
"""

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

from . import interop
from .conventions import memory_format_of
from .functional import Pending, StatsUpdate, clear_folded, conv_bn, is_fusable, materialize

SHORTCUTS = ("A", "B", "C")


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: x[:, :, ::stride, ::stride] with `extra` zero channels appended; no parameters.

    (N, C, H, W) -> (N, C + extra, ceil(H/stride), ceil(W/stride)), the block's output shape: a 3x3
    conv with padding 1 (or 1x1, padding 0) and this stride samples the same positions."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        if stride < 1 or extra < 0:
            raise ValueError(f"ZeroPadShortcut needs stride >= 1 and extra >= 0 channels, got stride={stride}, "
                             f"extra={extra} (option A cannot reduce channels)")
        self.stride, self.extra = stride, extra

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        out = F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, 0, self.extra))
        return out.contiguous(memory_format=memory_format_of(x))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra={self.extra}"


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


def check_shortcut(shortcut: Optional[str], residual: bool, default: str, zero_init_residual: bool = False
                   ) -> Optional[str]:
    """The shortcut option a net is built with: `default` when unset, None for a plain net."""
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False, got {residual!r}")
    if not residual:
        if shortcut is not None:
            raise ValueError(f"a plain net (residual=False) has no shortcut; got shortcut={shortcut!r}, leave it unset")
        if zero_init_residual:
            raise ValueError("zero_init_residual=True with residual=False would zero every block's output "
                             "(each plain block ends in its last BatchNorm)")
        return None
    shortcut = default if shortcut is None else shortcut
    if not isinstance(shortcut, str) or shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(map(repr, SHORTCUTS))}, got {shortcut!r}")
    return shortcut


def make_shortcut(shortcut: Optional[str], inplanes: int, outplanes: int, stride: int,
                  norm_layer: Callable[[int], nn.Module]) -> Optional[nn.Module]:
    """A block's `downsample`: B projects (1x1 conv + BN) where the shape changes, C on every block,
    A zero-pads where the shape changes; None is the identity (or no shortcut, in a plain net)."""
    changes = stride != 1 or inplanes != outplanes
    if shortcut == "C" or (shortcut == "B" and changes):
        return nn.Sequential(tv.conv1x1(inplanes, outplanes, stride), norm_layer(outplanes))
    if shortcut == "A" and changes:
        return ZeroPadShortcut(stride, outplanes - inplanes)
    return None


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


class _FusedNet:
    """What ResNet and CifarResNet share: input checks, the activation layout, refolding on
    train()/eval(), the fused stem and the running-statistics transaction around a forward.

    `memory_format` (default channels_last) is the layout activations run in; the input is
    converted once, the result is the same. It is kept as a name, so a model pickles."""

    _memory_format = "channels_last"

    @property
    def memory_format(self) -> torch.memory_format:
        return getattr(torch, self._memory_format)

    @memory_format.setter
    def memory_format(self, fmt: torch.memory_format) -> None:
        names = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous_format"}
        if fmt not in names:
            raise ValueError(f"memory_format must be torch.channels_last or torch.contiguous_format, got {fmt!r}")
        self._memory_format = names[fmt]

    def train(self, mode: bool = True):
        clear_folded(self)
        return super().train(mode)

    def _prepare(self, x: Tensor) -> Tensor:
        """The input checked and in the activation layout (left as it is where fusion is off: a vmapped
        tensor cannot change layout, and exported / scripted graphs should be torchvision's)."""
        if interop.is_proxy(x):
            return x.contiguous(memory_format=self.memory_format)
        if not torch.jit.is_tracing():  # (traced sizes are tensors: checking them would only warn)
            _check_input(x, self)
        return x.contiguous(memory_format=self.memory_format) if interop.fusion_allowed() else x

    def _stem(self, x: Tensor) -> Tensor:
        """relu(bn1(conv1(x))), one fused unit unless it must run as torchvision's modules. Under
        torch.fx it is one call_function node named "relu" (torchvision's node of the same value)."""
        if interop.is_proxy(x) and _stem_fusable(self.conv1, self.bn1, self.relu):
            return interop.fx_function(stem_forward, x, (self.conv1, self.bn1, self.relu), "relu")
        return stem_forward(x, self.conv1, self.bn1, self.relu)

    def _transaction(self, run, x: Tensor) -> Tensor:
        """run(x) with the running-statistics updates of every fused unit applied once it succeeded."""
        x = self._prepare(x)
        if interop.is_proxy(x):
            return run(x)
        updates = interop.begin()
        try:
            out = run(x)
        finally:
            interop.end(updates)
        interop.commit(updates)
        return out


def _stem_fusable(conv: nn.Module, bn: nn.Module, relu: nn.Module) -> bool:
    return is_fusable(conv, bn) and type(relu) is nn.ReLU and not interop.observed((conv, bn, relu))


def stem_forward(x: Tensor, conv: nn.Module, bn: nn.Module, relu: nn.Module) -> Tensor:
    """relu(bn(conv(x))): fused where allowed (resnet_fast.interop), else the modules' own forwards."""
    if interop.is_proxy(x) or not (interop.fusion_allowed() and _stem_fusable(conv, bn, relu)):
        return relu(bn(conv(x)))
    updates = interop.collector()
    out = materialize(conv_bn(Pending(x), conv, bn, True, updates))
    interop.flush(updates)
    return out


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
