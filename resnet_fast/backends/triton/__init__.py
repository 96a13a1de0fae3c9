"""GPU backend: Triton kernels behind the resnet_fast ops (also runs on CPU under TRITON_INTERPRET=1,
which is how CI tests it).

  conv_bn_stats    Triton implicit-GEMM conv with the previous BN+ReLU as its load prologue and the
                   statistics partials in its epilogue, + the Chan merge kernel; or, where tuning
                   measured cuDNN faster for the shape, aten conv with the Triton prologue / statistics
                   kernels around it (tuning.py);
  conv_bias_act    (eval) the same GEMM with a bias + residual + ReLU epilogue, or aten + Triton epilogue;
  bn_act           one Triton pass: BN apply (+ residual or dual-BN residual) (+ ReLU);
  *_backward       aten/cuDNN dgrad and wgrad; the BN/ReLU backward (mask, per-channel sums, apply) and
                   the BN-statistics chain rule as Triton passes around them. Normalized activations are
                   recomputed from the saved raw conv outputs, never stored.
bn_finalize and update_running_stats (a few per-channel vector ops) come from the reference.
Activations run NHWC inside; an NCHW input is converted, and results come back in the input's format.
"""

import functools
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ...conventions import conv_backward, memory_format_of, stat_dtype
from . import launch, tuning
from .launch import nhwc


def _on_tensor_device(fn):
    """Runs an op on its first tensor's device: Triton launches on the *current* CUDA device, and
    custom ops get no device guard (a model on cuda:1 without torch.cuda.set_device(1))."""
    @functools.wraps(fn)
    def guarded(*args):
        x = next(a for a in args if isinstance(a, Tensor))
        if x.device.type != "cuda":
            return fn(*args)
        with torch.cuda.device(x.device):
            return fn(*args)

    return guarded


def _back(t: Tensor, like: Tensor) -> Tensor:
    return t.contiguous(memory_format=memory_format_of(like))


def _aten_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups) -> Tensor:
    y = torch.ops.aten.convolution(x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                   groups)
    return nhwc(y)


def _conv_key(kind: str, x: Tensor, weight: Tensor, stride, padding, dilation, groups, flags: str) -> str:
    return (f"{kind}|x{tuple(x.shape)}|w{tuple(weight.shape)}|s{tuple(stride)}|p{tuple(padding)}|"
            f"d{tuple(dilation)}|g{groups}|{x.dtype}|{flags}")


def _choose(kind, x, weight, stride, padding, dilation, groups, flags, run):
    m = x.shape[0] * launch.out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]) \
        * launch.out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    key = _conv_key(kind, x, weight, stride, padding, dilation, groups,
                    f"{flags}|{launch.dot_precision(x.dtype)}")
    return tuning.choose(key, x.device, weight.shape[1], weight.shape[0] // groups, m, x.dtype, run)


@_on_tensor_device
def conv_bn_stats(x, in_mean, in_scale, in_bias, in_relu, weight, stride, padding, dilation, groups):
    xs = nhwc(x)
    prologue = (in_mean, in_scale, in_bias, in_relu) if in_scale is not None else None

    def run(choice):
        if choice == tuning.ATEN:
            z = launch.bn_act(xs, in_mean, in_scale, in_bias, None, None, None, None, in_relu) if prologue else xs
            y = _aten_conv(z, weight, None, stride, padding, dilation, groups)
            return (y, *launch.channel_stats(y))
        return launch.conv2d(xs, weight, stride, padding, dilation, groups, choice, prologue=prologue, stats=True)

    choice = _choose("stats", xs, weight, stride, padding, dilation, groups,
                     f"pro{prologue is not None}{in_mean is not None}{bool(in_relu)}", run)
    y, mean, var = run(choice)
    return _back(y, x), mean, var


@_on_tensor_device
def conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    # dL/dy = grad_y + (y - mean)*a + c per channel, a = 2*grad_var/M, c = grad_mean/M: one pass.
    count = y.numel() // y.shape[1]
    dy = launch.bn_act(nhwc(y), mean, grad_var * (2.0 / count), grad_mean / count, nhwc(grad_y), None, None, None,
                       False)
    xs = nhwc(x)
    z = launch.bn_act(xs, in_mean, in_scale, in_bias, None, None, None, None, in_relu) \
        if in_scale is not None else xs
    need_z = need_x or need_mean or need_scale or need_bias
    dz, dw = conv_backward(dy, z, weight, stride, padding, dilation, groups, need_z, need_w)  # dz NHWC like z
    if in_scale is None:
        return [_back(dz, x) if need_x else x.new_empty(0), x.new_empty(0), x.new_empty(0), x.new_empty(0), dw]
    dx, _, total, xsum, _ = launch.bn_act_backward(dz, z, xs, in_mean, in_scale, None, None, None, in_relu,
                                                   need_x, False, need_bias or need_mean, need_scale, False)
    return [_back(dx, x) if need_x else x.new_empty(0), -in_scale * total if need_mean else x.new_empty(0),
            xsum if need_scale else x.new_empty(0), total if need_bias else x.new_empty(0), dw]


@_on_tensor_device
def bn_act(x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu):
    out = launch.bn_act(nhwc(x), mean, scale, bias, nhwc(residual) if residual is not None else None, res_mean,
                        res_scale, res_bias, relu)
    return _back(out, x)


@_on_tensor_device
def bn_act_backward(grad_out, out, x, mean, scale, bias, residual, res_mean, res_scale, res_bias, relu,
                    output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_mean, need_scale, need_bias, need_res, need_rmean, need_rscale, need_rbias = output_mask
    dual = res_scale is not None
    need_sum = need_mean or need_bias or need_rmean or need_rbias
    res = nhwc(residual) if residual is not None else None
    dx, dres, total, xsum, rsum = launch.bn_act_backward(
        nhwc(grad_out), nhwc(out), nhwc(x), mean, scale, res, res_mean, res_scale, relu, need_x, need_res,
        need_sum, need_scale, need_rscale and dual)

    def empty():
        return x.new_empty(0)

    return [_back(dx, x) if need_x else empty(),
            -scale * total if need_mean and mean is not None else empty(),
            xsum if need_scale else empty(),
            total.clone() if need_bias else empty(),
            _back(dres, residual) if need_res else empty(),
            -res_scale * total if need_rmean and res_mean is not None else empty(),
            rsum if need_rscale and dual else empty(),
            total.clone() if need_rbias and res_bias is not None else empty()]


@_on_tensor_device
def conv_bias_act(x, weight, bias, residual, relu, stride, padding, dilation, groups):
    xs = nhwc(x)
    res = nhwc(residual) if residual is not None else None

    def run(choice):
        if choice != tuning.ATEN:
            return launch.conv2d(xs, weight, stride, padding, dilation, groups, choice, bias=bias, residual=res,
                                 relu=relu)
        if res is None and not relu and (bias is None or bias.dtype == xs.dtype):
            return _aten_conv(xs, weight, bias, stride, padding, dilation, groups)
        y = _aten_conv(xs, weight, None, stride, padding, dilation, groups)
        sdt = stat_dtype(y.dtype)
        shift = bias.to(sdt) if bias is not None else y.new_zeros(y.shape[1], dtype=sdt)
        return launch.bn_act(y, None, torch.ones_like(shift), shift, res, None, None, None, relu)

    choice = _choose("bias", xs, weight, stride, padding, dilation, groups,
                     f"b{bias is not None}r{res is not None}{relu}", run)
    return _back(run(choice), x)


@_on_tensor_device
def conv_bias_act_backward(grad_out, out, x, weight, bias, residual, relu, stride, padding, dilation, groups,
                           output_mask: Sequence[bool]) -> List[Tensor]:
    need_x, need_w, need_b, need_res = output_mask
    outs = nhwc(out)
    sdt = stat_dtype(out.dtype)
    ones = torch.ones(out.shape[1], dtype=sdt, device=out.device)
    # g = grad_out masked by the ReLU, and sum(g) for the bias, in one pass.
    g, _, db, _, _ = launch.bn_act_backward(nhwc(grad_out), outs, outs, None, ones, None, None, None, relu, True,
                                            False, need_b, False, False)
    dx, dw = conv_backward(g, nhwc(x), weight, stride, padding, dilation, groups, need_x, need_w)
    return [_back(dx, x) if need_x else x.new_empty(0), dw,
            db.to(bias.dtype) if need_b else x.new_empty(0),
            _back(g, residual) if need_res else x.new_empty(0)]
