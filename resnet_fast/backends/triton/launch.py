"""Host side of the Triton kernels: layout, allocation, block sizes and grids.

Every function takes and returns NHWC (channels_last) activations; the backend converts at its
boundary. Per-channel vectors are in the stat dtype (float32, float64 for float64 activations).
Launches go to the current CUDA stream (Triton's default), with no host synchronization.
"""

from typing import Optional, Sequence, Tuple

import torch
import triton
from torch import Tensor

from ...conventions import stat_dtype
from . import bn_kernels as bk
from . import conv_kernels as ck
from .tuning import INTERPRET, Config

CL = torch.channels_last


def nhwc(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=CL)


def _rows(t: Tensor) -> Tuple[int, int]:
    """(M, C) of an NHWC activation seen as M rows of C channels."""
    return t.numel() // t.shape[1] if t.shape[1] else 0, t.shape[1]


def _blocks(c: int) -> Tuple[int, int]:
    """(BLOCK_M, BLOCK_C) for the row kernels: ~4K elements per program on the GPU, small tiles
    under the interpreter so tiny test shapes span several programs."""
    if INTERPRET:
        return 8, min(16, triton.next_power_of_2(c))
    block_c = min(128, triton.next_power_of_2(c))
    return max(16, 4096 // block_c), block_c


def bn_act(x: Tensor, mean: Optional[Tensor], scale: Tensor, bias: Tensor, residual: Optional[Tensor],
           res_mean: Optional[Tensor], res_scale: Optional[Tensor], res_bias: Optional[Tensor],
           relu: bool) -> Tensor:
    """act((x - mean)*scale + bias + r) over NHWC x (see ops.bn_act)."""
    out = torch.empty_like(x, memory_format=CL)
    m, c = _rows(x)
    if m == 0:
        return out
    bm, bc = _blocks(c)
    res_mode = 0 if residual is None else (2 if res_scale is not None else 1)
    dummy = scale
    bk._bn_act_fwd_kernel[(triton.cdiv(m, bm), triton.cdiv(c, bc))](
        x, out, mean if mean is not None else dummy, scale, bias,
        residual if residual is not None else x, res_mean if res_mean is not None else dummy,
        res_scale if res_scale is not None else dummy, res_bias if res_bias is not None else dummy,
        m, c, HAS_MEAN=mean is not None, RES_MODE=res_mode, HAS_RMEAN=res_mean is not None, RELU=relu,
        BLOCK_M=bm, BLOCK_C=bc)
    return out


def bn_act_backward(grad_out: Tensor, out: Tensor, x: Tensor, mean: Optional[Tensor], scale: Tensor,
                    residual: Optional[Tensor], res_mean: Optional[Tensor], res_scale: Optional[Tensor],
                    relu: bool, need_dx: bool, need_dres: bool, need_sum: bool, need_xsum: bool, need_rsum: bool):
    """(dx, dres, sum g, sum g*(x - mean), sum g*(residual - res_mean)); unrequested entries None.
    g = grad_out masked by the ReLU (out > 0)."""
    m, c = _rows(x)
    sdt = scale.dtype
    bm, bc = _blocks(c)
    tiles = triton.cdiv(m, bm)
    dx = torch.empty_like(x, memory_format=CL) if need_dx else None
    dres = torch.empty_like(x, memory_format=CL) if need_dres else None
    parts = [torch.empty((tiles, c), dtype=sdt, device=x.device) if need else None
             for need in (need_sum, need_xsum, need_rsum)]
    if m:
        dummy = scale
        bk._bn_act_bwd_kernel[(tiles, triton.cdiv(c, bc))](
            grad_out, out, x, mean if mean is not None else dummy, scale,
            residual if residual is not None else x, res_mean if res_mean is not None else dummy,
            res_scale if res_scale is not None else dummy,
            dx if dx is not None else x, dres if dres is not None else x,
            *(p if p is not None else dummy for p in parts),
            m, c, HAS_MEAN=mean is not None, DUAL=res_scale is not None, HAS_RMEAN=res_mean is not None,
            RELU=relu, NEED_DX=need_dx, NEED_DRES=need_dres, NEED_SUM=need_sum, NEED_XSUM=need_xsum,
            NEED_RSUM=need_rsum, BLOCK_M=bm, BLOCK_C=bc)
    sums = [p.sum(dim=0) if p is not None else None for p in parts]  # fixed order: deterministic
    return (dx, dres, *sums)


def _merge_stats(pmean: Tensor, pm2: Tensor, m: int, tile_m: int) -> Tuple[Tensor, Tensor]:
    """(mean, biased var) over all m rows from per-tile partials [T, C]: tiles are merged in groups by
    many programs first (a batch-256 stem has ~25k tiles), then the groups by one pass; fixed order."""
    tiles, c = pmean.shape
    if m == 0:
        nan = torch.full((c,), float("nan"), dtype=pmean.dtype, device=pmean.device)
        return nan, nan.clone()
    block_c = min(16 if INTERPRET else 64, triton.next_power_of_2(c))
    block_t = 8 if INTERPRET else 64
    group_t = 4 * block_t if INTERPRET else 16 * block_t
    groups = triton.cdiv(tiles, group_t)
    gmean = torch.empty((groups, c), dtype=pmean.dtype, device=pmean.device)
    gm2 = torch.empty_like(gmean)
    bk._stats_merge_kernel[(triton.cdiv(c, block_c), groups)](pmean, pm2, gmean, gm2, tiles, m, c, tile_m, group_t,
                                                              FINAL=groups == 1, BLOCK_T=block_t, BLOCK_C=block_c)
    if groups == 1:
        return gmean.view(c), gm2.view(c)
    mean = torch.empty((1, c), dtype=pmean.dtype, device=pmean.device)
    var = torch.empty_like(mean)
    bk._stats_merge_kernel[(triton.cdiv(c, block_c), 1)](gmean, gm2, mean, var, groups, m, c, tile_m * group_t,
                                                         groups, FINAL=True, BLOCK_T=block_t, BLOCK_C=block_c)
    return mean.view(c), var.view(c)


def channel_stats(y: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of NHWC y (Chan partials, then the merge)."""
    m, c = _rows(y)
    bm, bc = _blocks(c)
    tiles = triton.cdiv(m, bm)
    sdt = stat_dtype(y.dtype)
    pmean = torch.empty((tiles, c), dtype=sdt, device=y.device)
    pm2 = torch.empty_like(pmean)
    if m:
        bk._channel_stats_partial_kernel[(tiles, triton.cdiv(c, bc))](y, pmean, pm2, m, c, BLOCK_M=bm, BLOCK_C=bc)
    return _merge_stats(pmean, pm2, m, bm)


def out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def dot_precision(dtype: torch.dtype) -> str:
    """tf32 for float32 exactly when eager's convolution would use it (torch.backends.cudnn.allow_tf32)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def conv2d(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           groups: int, config: Config, *, prologue: Optional[Tuple] = None, stats: bool = False,
           bias: Optional[Tensor] = None, residual: Optional[Tensor] = None, relu: bool = False):
    """Implicit-GEMM conv of NHWC x. prologue = (in_mean, in_scale, in_bias, in_relu) or None.
    stats: returns (y, mean, var); otherwise y = act(conv + bias [+ residual]) (relu/bias/residual)."""
    n, cin, h, w = x.shape
    cout, cin_g, r, s = weight.shape
    weight = weight.contiguous(memory_format=CL)  # (Cout, R, S, Cin_g): a B tile's channels are contiguous
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    m = n * p * q
    y = torch.empty((n, cout, p, q), dtype=x.dtype, device=x.device, memory_format=CL)
    cout_g = cout // groups
    tiles = triton.cdiv(m, config.block_m)
    sdt = stat_dtype(x.dtype)
    pmean = torch.empty((tiles, cout), dtype=sdt, device=x.device) if stats else y
    pm2 = torch.empty_like(pmean) if stats else y
    in_mean, in_scale, in_bias, in_relu = prologue if prologue is not None else (None, None, None, False)
    dummy = y
    if m and cout:
        ck._conv_fwd_kernel[(tiles, triton.cdiv(cout_g, config.block_n), groups)](
            x, weight, y, in_mean if in_mean is not None else dummy, in_scale if in_scale is not None else dummy,
            in_bias if in_bias is not None else dummy, bias if bias is not None else dummy,
            residual if residual is not None else dummy, pmean, pm2,
            h, w, cin, p, q, cout, cin_g, cout_g, m, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], *weight.stride(), R=r, S=s,
            PROLOGUE=prologue is not None, PRO_MEAN=in_mean is not None, PRO_RELU=bool(in_relu),
            EPILOGUE=ck.EPI_STATS if stats else ck.EPI_BIAS, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, RELU=relu, PRECISION=dot_precision(x.dtype),
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            num_warps=config.num_warps, num_stages=config.num_stages)
    if not stats:
        return y
    mean, var = _merge_stats(pmean, pm2, m, config.block_m)
    return y, mean, var
