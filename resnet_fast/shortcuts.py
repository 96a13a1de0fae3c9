"""The seed paper's shortcut options (He et al. 2015, section 4.1) as block `downsample` modules.

A: identity, and where the shape changes x[:, :, ::s, ::s] with zero channels appended (no
parameters); B: a 1x1 conv + BatchNorm projection where the shape changes (torchvision's); C: a
projection on every block. None (a plain net) has no shortcut at all.
"""

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

from .conventions import memory_format_of

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
