"""What resnet_fast's ResNet and CifarResNet share: input checks, the activation layout, refolding on
train()/eval(), the fused stem (conv1 -> bn1 -> relu) and the running-statistics transaction
around a forward (resnet_fast.interop decides what fuses)."""

import torch
from torch import Tensor, nn

from . import interop
from .functional import Pending, clear_folded, conv_bn, is_fusable, materialize


def _check_input(x: Tensor, model: nn.Module) -> None:
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
