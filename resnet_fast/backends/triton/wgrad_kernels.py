"""Weight gradient of a conv -> BN -> ReLU unit in one Triton kernel, with both of its inputs formed on load
(the bfloat16 backward closed in Triton; closed_backward.py, the "triton-closed" engine):

    dW[co, ci, r, s] = sum_m dY[m, co] * A[m, (r, s, ci)]          m = (n, p, q) an output pixel
    dY[m, co] = grad_y[m, co] + a[co]*(y[m, co] - mean[co]) + c[co]  (CHAIN: the BN statistics' chain rule,
                                                                    a = 2*grad_var/M, c = grad_mean/M)
    A[m, (r, s, ci)] = act((x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, ci] - in_mean)*in_scale + in_bias)
                       (PROLOGUE: the previous BN + ReLU; 0 outside the image, padding after the prologue)
so neither dY nor the normalized input is ever written. One program owns a [BLOCK_N output channels] x
[BLOCK_C input channels] tile of one filter tap (r, s) and one of SPLITS consecutive ranges of the M rows
(a resnet50 layer has only a few dozen such tiles: the M split gives the GPU enough programs); the
per-split partial dW are summed in a fixed order afterwards (no atomics: the same result every run).
Groups are not supported (ResNeXt keeps aten's wgrad).
"""

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .bn_kernels import _relu


@triton.jit
def _wgrad_kernel(
    x_ptr,                               # [N, H, W, CIN] (NHWC)
    gy_ptr, y_ptr,                       # [M, COUT] (NHWC rows): the incoming gradient, the conv output
    mean_ptr, a_ptr, c_ptr,              # [COUT] stat dtype (CHAIN)
    in_mean_ptr, in_scale_ptr, in_bias_ptr,   # [CIN] stat dtype (PROLOGUE)
    dw_ptr,                              # [SPLITS, COUT, R, S, CIN] float32 partials (strides sw_*)
    H, W, CIN, P, Q, COUT, M, ROWS_PER_SPLIT,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sw_split, sw_co, sw_ci, sw_r, sw_s,
    S: tl.constexpr, CHAIN: tl.constexpr, PROLOGUE: tl.constexpr, PRO_MEAN: tl.constexpr, PRO_RELU: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)                               # (tap, channel block)
    num_cb = tl.cdiv(CIN, BLOCK_C)
    rs = pid_k // num_cb
    r = rs // S
    s = rs % S
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ci = (pid_k % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask = co < COUT
    c_mask = ci < CIN
    if CHAIN:
        mean = tl.load(mean_ptr + co, mask=n_mask, other=0.0)
        ca = tl.load(a_ptr + co, mask=n_mask, other=0.0)
        cc = tl.load(c_ptr + co, mask=n_mask, other=0.0)
    if PROLOGUE:
        scale = tl.load(in_scale_ptr + ci, mask=c_mask, other=0.0)
        shift = tl.load(in_bias_ptr + ci, mask=c_mask, other=0.0)
        if PRO_MEAN:
            shift -= tl.load(in_mean_ptr + ci, mask=c_mask, other=0.0) * scale
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    m_lo = tl.program_id(2) * ROWS_PER_SPLIT
    m_hi = tl.minimum(m_lo + ROWS_PER_SPLIT, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_mask = rm < m_hi
        g_offs = rm.to(tl.int64)[:, None] * COUT + co[None, :]
        g_mask = m_mask[:, None] & n_mask[None, :]
        g = tl.load(gy_ptr + g_offs, mask=g_mask, other=0.0)
        if CHAIN:
            yv = tl.load(y_ptr + g_offs, mask=g_mask, other=0.0).to(mean.dtype)
            gv = g.to(mean.dtype) + (yv - mean[None, :]) * ca[None, :] + cc[None, :]
            g = tl.where(g_mask, gv, 0.0).to(gy_ptr.dtype.element_ty)
        n_img = rm // (P * Q)
        pq = rm % (P * Q)
        ih = (pq // Q) * stride_h - pad_h + r * dil_h
        iw = (pq % Q) * stride_w - pad_w + s * dil_w
        valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_mask = valid[:, None] & c_mask[None, :]
        pix = ((n_img * H + ih) * W + iw).to(tl.int64) * CIN
        a = tl.load(x_ptr + pix[:, None] + ci[None, :], mask=a_mask, other=0.0)
        if PROLOGUE:
            v = a.to(scale.dtype) * scale[None, :] + shift[None, :]
            if PRO_RELU:
                v = _relu(v)
            a = tl.where(a_mask, v, 0.0).to(x_ptr.dtype.element_ty)  # padding after the prologue
        acc = tl.dot(tl.trans(g), a, acc, input_precision=PRECISION)
    offs = tl.program_id(2) * sw_split + co[:, None] * sw_co + ci[None, :] * sw_ci + r * sw_r + s * sw_s
    tl.store(dw_ptr + offs, acc, mask=n_mask[:, None] & c_mask[None, :])


def wgrad(x: Tensor, grad_y: Tensor, weight_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int],
          dilation: Sequence[int], prologue: Optional[Tuple] = None, chain: Optional[Tuple] = None,
          blocks: Tuple[int, int, int] = (32, 16, 16), num_warps: int = 4,
          splits: Optional[int] = None) -> Tensor:
    """dW (float32, shape weight_shape, channels_last) of conv(prologue(x)) given grad_y, NHWC x / grad_y.
    prologue = (in_mean or None, in_scale, in_bias, relu); chain = (y, mean, a, c) for dY on load;
    splits: how many row ranges the M reduction is cut into (default: enough programs for a GPU)."""
    n, cin, h, w = x.shape
    cout, cin_w, r, s = weight_shape
    if cin_w != cin:
        raise ValueError(f"wgrad supports groups=1 only: weight has {cin_w} input channels, x has {cin}")
    _, _, p, q = grad_y.shape
    x = x.contiguous(memory_format=torch.channels_last)
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    in_mean, in_scale, in_bias, relu = prologue if prologue is not None else (None, None, None, False)
    y, mean, a, c = chain if chain is not None else (None, None, None, None)
    y = y.contiguous(memory_format=torch.channels_last) if y is not None else grad_y
    block_m, block_n, block_c = blocks
    m = n * p * q
    if m == 0:
        return torch.zeros(tuple(weight_shape), dtype=torch.float32, device=x.device,
                           memory_format=torch.channels_last)
    tiles = triton.cdiv(cout, block_n) * r * s * triton.cdiv(cin, block_c)
    if splits is None:  # ~4 programs per SM of a 132-SM GPU, at least BLOCK_M rows each
        splits = max(1, min(triton.cdiv(m, block_m), triton.cdiv(528, tiles)))
    rows = triton.cdiv(triton.cdiv(m, splits), block_m) * block_m
    splits = triton.cdiv(m, rows)
    parts = torch.empty((splits, cout, r, s, cin), dtype=torch.float32, device=x.device)
    dummy = parts
    grid = (triton.cdiv(cout, block_n), r * s * triton.cdiv(cin, block_c), splits)
    precision = "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"
    _wgrad_kernel[grid](
        x, grad_y, y, mean if mean is not None else dummy, a if a is not None else dummy,
        c if c is not None else dummy, in_mean if in_mean is not None else dummy,
        in_scale if in_scale is not None else dummy, in_bias if in_bias is not None else dummy, parts,
        h, w, cin, p, q, cout, m, rows, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        parts.stride(0), parts.stride(1), parts.stride(4), parts.stride(2), parts.stride(3), S=s,
        CHAIN=chain is not None, PROLOGUE=prologue is not None, PRO_MEAN=in_mean is not None,
        PRO_RELU=bool(relu), PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c,
        num_warps=num_warps)
    # fixed-order sum of the splits; (COUT, R, S, CIN) viewed as (COUT, CIN, R, S) is the channels_last weight
    return parts.sum(dim=0).permute(0, 3, 1, 2)
