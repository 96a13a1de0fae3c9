"""conv_bn_stats_backward as the "closed-wgrad+cudnn-dgrad" engine (float16 and bfloat16, CUDA): the Triton
wgrad kernel for dW and a cuDNN dgrad graph for the data gradient, as a registry override (primitives P first).
The bfloat16 plan where cuDNN has no fused SBR-wgrad engine; in float16 the probe times it against cudnn-fused.

    dy        = grad_y + (y - mean)*2*grad_var/M + grad_mean/M      (P.bn_act: the BN statistics' chain rule,
                                                                   written once, as the cudnn-fused engine does:
                                                                   no cuDNN dgrad takes it as a prologue)
    dW        = Triton wgrad(x, dy), the previous BN + ReLU applied to x on load (closed_backward.closed_wgrad;
                it reads the formed dy: one read, where dY on load would read grad_y and y)
    dx, sums  = cuDNN dgrad_dbn(dy, W, x, ...): dgrad -> dReLU -> dx = g*in_scale, sum g, sum g*(x - in_mean)
                in one graph (the cudnn-fused engine's graph, but with scale' and bias' in float32: the ReLU
                mask recomputed as the Triton / aten+triton forward computed it, not from half-rounded
                vectors); without a prologue the plain dgrad graph
    d in_mean = -in_scale * sum g, d in_scale = sum g*(x - in_mean), d in_bias = sum g.
Deviceless check_support (cuDNN 9.24, sm_90, the committed device description): dgrad_dbn and plain dgrad have
engines for every resnet18 / resnet50 conv unit at batch 256 in float16 and bfloat16, dgrad_dbn with float32
vectors too (tests/backends_cudnn/test_deviceless.py), so
no Triton pass for the dBN sums is needed. A call the graph cannot serve (groups, a prologue without ReLU, a
dtype the executor lacks, a graph without an engine) goes to the cuDNN engine's FALLBACK (the composite, or
what `using_fallback` installs: the probe makes it raise). Never run on a GPU: wiring and math are tested on
CPU with TorchExecutor / Recording and the Triton kernels interpreted.
"""

from typing import List, Sequence

from torch import Tensor

from ...conventions import stat_dtype
from ..triton.closed_backward import closed_wgrad
from . import engine


def conv_bn_stats_backward(P, grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    prologue = in_scale is not None
    need_z = need_x or need_mean or need_scale or need_bias
    unit = engine._unit("dgrad_dbn" if prologue else "dgrad", x, weight, stride, padding, dilation, prologue)
    unit = unit._replace(vectors=stat_dtype(x.dtype)) if prologue else unit  # float32 scale' / bias'
    servable = (x.dtype in engine.executor().dgrad_dtypes and groups == 1 and (not prologue or bool(in_relu))
                and x.dim() == 4)
    if not servable or (need_z and not engine.supported(unit, x.device)):
        return engine.FALLBACK["conv_bn_stats_backward"](P, grad_y, grad_mean, grad_var, x, in_mean, in_scale,
                                                         in_bias, in_relu, weight, y, mean, stride, padding,
                                                         dilation, groups, output_mask)
    dy = engine.chain_rule(P, grad_y, grad_var, grad_mean, y, mean)
    pro = (in_mean, in_scale, in_bias, in_relu) if prologue else None
    empty = x.new_empty(0)
    dw = closed_wgrad(x, dy, weight, stride, padding, dilation, prologue=pro) if need_w else empty
    if not need_z:
        return [empty, empty, empty, empty, dw]
    vectors = engine._vectors(x, in_mean, in_scale, in_bias, unit.vectors) if prologue else {}
    return engine.data_gradient(unit, dy, x, in_mean, in_scale, vectors, weight, output_mask) + [dw]
