"""The folded tensors behind optimize_for_inference, each derived once from source-model tensors and
refolded in place when those change.

  FoldedConv   conv -> BatchNorm as one conv with bias: W' = W * gamma/sqrt(rv + eps) per output
                channel, b' = beta - rm * gamma/sqrt(rv + eps) (bn_math.fold_bn: float64 math), cast to
                dtype, channels_last; runs as ops.conv_bias_act (or straight on oneDNN, CPU float32).
  CastLinear   nn.Linear's weight and bias cast to dtype.
Staleness: each compares the storage pointer and version counter of its source tensors (and eps)
with those it last folded from.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from . import _dispatch, bn_math, ops
from .backends import onednn_inference
from .sync_bn import SyncBatchNorm2d

_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, SyncBatchNorm2d)


def _owner_dict(module: nn.Module, name: str) -> dict:
    """The dict that holds module.<name> (its parameters, its buffers, or plain attributes)."""
    return next((d for d in (module._parameters, module._buffers) if name in d), module.__dict__)


class Frozen:
    """Tensors derived once from source tensors; `stale()` says when the sources changed since."""

    def source_names(self) -> List[Tuple[nn.Module, str]]:
        raise NotImplementedError

    def sources(self) -> List[Tensor]:
        return [t for t in (getattr(m, n) for m, n in self.source_names()) if t is not None]

    def _state(self):
        # Read straight from the modules' dicts (a reassigned Parameter lands there too): resnet50's
        # 267 source tensors checked in ~70 us per call instead of ~300 us through nn.Module.__getattr__.
        return [None if t is None else (t.data_ptr(), t._version) for t in [d.get(n) for d, n in self._slots]]

    def stale(self) -> bool:
        return self._state() != self._key

    def refold(self) -> None:
        for t in self.sources():
            if t.device != self.device:
                raise RuntimeError(f"the source model's {self.name} is now on {t.device}, but it was optimized for "
                                   f"{self.device}; call optimize_for_inference again after moving a model")
        with torch.no_grad():
            self._fill()
        self._slots = [(_owner_dict(m, n), n) for m, n in self.source_names()]
        self._key = self._state()


class FoldedConv(Frozen):
    """conv -> BatchNorm as one conv_bias_act: W' [Cout, Cin/g, R, S] channels_last and b' [Cout], in dtype."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module, dtype: torch.dtype, name: str):
        check_foldable(conv, bn, name)
        self.conv, self.bn, self.name, self.device = conv, bn, name, conv.weight.device
        self.args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        w = conv.weight
        self.weight = torch.empty(w.shape, dtype=dtype, device=self.device, memory_format=torch.channels_last)
        self.bias = torch.empty(w.shape[0], dtype=dtype, device=self.device)
        self.prepack, self._packed = _dispatch.prepares_conv_weights(self.device.type), None
        self.direct = self.prepack and onednn_inference.available(self.device, dtype)
        self.refold()

    def source_names(self) -> List[Tuple[nn.Module, str]]:
        bn = self.bn
        return [(self.conv, "weight"), (bn, "weight"), (bn, "bias"), (bn, "running_mean"), (bn, "running_var")]

    def _state(self):
        return super()._state() + [self.bn.eps]

    def _fill(self) -> None:
        bn = self.bn
        w, b = bn_math.fold_bn(self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        self.weight.copy_(w)
        self.bias.copy_(b)
        self._packed = None

    def __call__(self, x: Tensor, residual: Optional[Tensor] = None, relu: bool = True,
                 residual_is_dead: bool = False) -> Tensor:
        """residual_is_dead: the caller never reads residual again, so it may hold the result."""
        if self.prepack:
            if self._packed is None:
                self._packed = _dispatch.prepare_conv_weight(self.weight, list(x.shape), *self.args)
            if self.direct and self._packed.layout == torch._mkldnn:
                return onednn_inference.conv(x, self._packed, self.bias, self.args, residual, relu,
                                             residual_is_dead)
            return ops.conv_bias_act(x, self._packed, self.bias, residual, relu, *self.args)
        return ops.conv_bias_act(x, self.weight, self.bias, residual, relu, *self.args)


class CastLinear(Frozen):
    """nn.Linear with weight [out, in] and bias [out] cast to dtype once."""

    def __init__(self, fc: nn.Linear, dtype: torch.dtype, name: str):
        self.fc, self.name, self.device = fc, name, fc.weight.device
        self.weight = torch.empty(fc.weight.shape, dtype=dtype, device=self.device)
        self.bias = None if fc.bias is None else torch.empty(fc.bias.shape, dtype=dtype, device=self.device)
        self.refold()

    def source_names(self) -> List[Tuple[nn.Module, str]]:
        return [(self.fc, "weight"), (self.fc, "bias")]

    def _fill(self) -> None:
        self.weight.copy_(self.fc.weight)
        if self.bias is not None:
            self.bias.copy_(self.fc.bias)

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def check_foldable(conv: nn.Module, bn: nn.Module, name: str) -> None:
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != "zeros" \
            or not isinstance(conv.padding, tuple):
        raise TypeError(f"optimize_for_inference: {name} must be a bias-free nn.Conv2d with numeric zero padding, "
                        f"got {conv!r}")
    if type(bn) in _BATCHNORMS:  # in eval mode every one of these normalizes with its running statistics
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"optimize_for_inference: {name}'s {type(bn).__name__} has no running statistics "
                             f"(track_running_stats=False), so there is nothing to fold")
    elif type(bn) is not FrozenBatchNorm2d:
        raise TypeError(f"optimize_for_inference: {name} must be followed by nn.BatchNorm2d (or a SyncBatchNorm) "
                        f"or FrozenBatchNorm2d, got {type(bn).__name__}")
