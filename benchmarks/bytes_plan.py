"""The bfloat16 backward closed in Triton, as planned (not built yet): the launches its kernels would make,
written as functions with the ops' signatures that log launches instead of computing, so the byte
accounting can judge the plan before it exists. Per conv -> BN -> ReLU unit:
  wgrad   one GEMM kernel: reads grad_y and y (the BN-statistics chain rule applied on load) and x (the
          previous BN + ReLU applied on load), writes dW;
  dgrad   one GEMM kernel: reads grad_y and y (chain rule on load) and W; its epilogue reads x to recompute
          the ReLU mask, writes dx = g*scale and per-tile partials of sum g and sum g*(x - mean);
  merge   the partials reduced to per-channel sums (tiny).
Everything else (forward, block ends, their backward) is what the Triton backend runs today.
"""

from typing import Callable, Dict

import torch

_log: Dict[str, Callable] = {}


def set_recorder(recorder) -> None:
    _log["log"] = recorder.log


def _partials(x, weight_like_rows=128):
    m = x.numel() // x.shape[1]
    return x.new_empty(((m + weight_like_rows - 1) // weight_like_rows, x.shape[1]), dtype=torch.float32)


def conv_bn_stats_backward(grad_y, grad_mean, grad_var, x, in_mean, in_scale, in_bias, in_relu, weight, y, mean,
                           stride, padding, dilation, groups, output_mask):
    need_x, need_mean, need_scale, need_bias, need_w = output_mask
    log = _log["log"]
    vec = [v for v in (in_mean, in_scale, in_bias, mean, grad_mean, grad_var) if v is not None]
    empty = x.new_empty(0)
    dw = torch.empty_like(weight) if need_w else empty
    if need_w:
        log("plan.wgrad(chain rule + BN/ReLU on load)", "conv", [grad_y, y, x, *vec], [dw])
    need_z = need_x or need_mean or need_scale or need_bias
    if not need_z:
        return [empty, empty, empty, empty, dw]
    dx = torch.empty_like(x)
    parts = [_partials(x), _partials(x)] if in_scale is not None else []
    log("plan.dgrad(chain rule on load, dReLU + dBN sums in epilogue)", "conv",
        [grad_y, y, weight, *vec] + ([x] if in_scale is not None else []), [dx, *parts])
    if not parts:
        return [dx, empty, empty, empty, dw]
    sums = [torch.empty_like(in_scale, dtype=torch.float32) for _ in range(2)]
    log("plan.merge_partials", "memory", parts, sums)
    return [dx if need_x else empty, sums[0] if need_mean else empty, sums[1] if need_scale else empty,
            sums[0] if need_bias else empty, dw]


def triton_closed_table():
    return {"conv_bn_stats_backward": conv_bn_stats_backward}
