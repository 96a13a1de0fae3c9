"""CPU float32 inference convolutions straight on oneDNN (torch.ops.mkldnn), for optimize_for_inference.

A folded conv (W' [Cout, Cin/g, R, S], b' [Cout]) runs as one oneDNN primitive with its epilogue as
post-ops: y = act(conv(x, W') + b' [+ residual]), W' already in oneDNN's blocked layout (the native
backend's prepare_conv_weight hook). What this adds over ops.conv_bias_act on the native backend:
  * `conv` calls the oneDNN op directly: no custom-op layer (schema checks, autograd wrapper,
    dispatch: about 0.1 ms a call, 53 calls in resnet50; at batch 1 that is ~10% of the forward).
    The inference module checks its input once; every conv shape follows from the model.
  * at a block end whose residual is dead afterwards (the block input or the projection's output),
    the sum post-op accumulates into the residual's buffer in place (`_convolution_pointwise_`):
    no new output buffer per block.
Activations stay dense channels_last torch tensors (oneDNN's brgemm kernels take NHWC directly).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

_MKLDNN = torch.ops.mkldnn
_POINTWISE = getattr(_MKLDNN, "_convolution_pointwise", None)
_POINTWISE_INPLACE = getattr(getattr(_MKLDNN, "_convolution_pointwise_", None), "binary", None)

ConvArgs = Tuple[List[int], List[int], List[int], int]  # stride, padding, dilation, groups


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch has the oneDNN ops for float32 CPU convolutions with post-ops."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and None not in (_POINTWISE, _POINTWISE_INPLACE))


def conv(x: Tensor, packed: Tensor, bias: Tensor, args: ConvArgs, residual: Optional[Tensor], relu: bool,
         residual_is_dead: bool = False) -> Tensor:
    """act(conv(x, W') + b' [+ residual]) for x float32 channels_last; with residual_is_dead the
    result is written into residual's buffer (which the caller must not read again)."""
    stride, padding, dilation, groups = args
    if residual is None:
        return _POINTWISE(x, packed, bias, padding, stride, dilation, groups, "relu" if relu else "none", [], "")
    unary = "relu" if relu else None
    if residual_is_dead and residual.is_contiguous(memory_format=torch.channels_last):
        return _POINTWISE_INPLACE(residual, x, packed, bias, padding, stride, dilation, groups, "add", 1.0, unary,
                                  [], "")
    residual = residual.contiguous(memory_format=torch.channels_last)
    y = _POINTWISE.binary(x, residual, packed, bias, padding, stride, dilation, groups, "add", 1.0, unary, [], "")
    return y.contiguous(memory_format=torch.channels_last)
