"""Input gradient of a conv -> BN -> ReLU unit in one Triton kernel (the bfloat16 backward closed in Triton;
closed_backward.py, the "triton-closed" engine): the BN statistics' chain rule applied to the incoming gradient on load,
the previous BN + ReLU's backward and its dBN sums in the epilogue:

    dZ[m, ci] = sum_{r, s, co} dY[n, p, q, co] * W[co, ci, r, s],   m = (n, ih, iw) an input pixel,
                (p, q) = ((ih + ph - r*dh) / sh, (iw + pw - s*dw) / sw) where that divides exactly and is inside
    dY = grad_y + a*(y - mean) + c                                  (CHAIN, per output channel)
    g  = dZ * (x*scale + bias - mean*scale > 0)                     (PROLOGUE with ReLU: the mask recomputed)
    dx = g*scale; partials per BLOCK_M rows of sum g and sum g*(x - in_mean)   (PROLOGUE)
so dY and the ReLU mask are never written, and the dBN sums need no pass of their own. The partials are
reduced in a fixed order (no atomics). Groups are not supported.
"""

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _dgrad_kernel(
    gy_ptr, y_ptr,                       # [N, P, Q, COUT] (NHWC): the incoming gradient, the conv output
    mean_ptr, a_ptr, c_ptr,              # [COUT] stat dtype (CHAIN)
    w_ptr,                               # [COUT, CIN, R, S] with strides (sw_co, sw_ci, sw_r, sw_s)
    x_ptr,                               # [N, H, W, CIN] (NHWC), the unit's input (PROLOGUE)
    in_mean_ptr, in_scale_ptr, in_bias_ptr,   # [CIN] stat dtype (PROLOGUE)
    dx_ptr,                              # [N, H, W, CIN] (NHWC), x's dtype
    psum_ptr, pxs_ptr,                   # [cdiv(M, BLOCK_M), CIN] stat dtype (PROLOGUE)
    H, W, CIN, P, Q, COUT, M,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sw_co, sw_ci, sw_r, sw_s,
    R: tl.constexpr, S: tl.constexpr, CHAIN: tl.constexpr, PROLOGUE: tl.constexpr, PRO_MEAN: tl.constexpr,
    PRO_RELU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)           # input pixels
    ci = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask = rm < M
    c_mask = ci < CIN
    n_img = rm // (H * W)
    hw = rm % (H * W)
    ih = hw // W
    iw = hw % W
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    num_kb = tl.cdiv(COUT, BLOCK_K)
    for it in range(0, R * S * num_kb):
        rs = it // num_kb
        r = rs // S
        s = rs % S
        co = (it % num_kb) * BLOCK_K + rk
        k_mask = co < COUT
        ph = ih + pad_h - r * dil_h
        pw = iw + pad_w - s * dil_w
        p = ph // stride_h
        q = pw // stride_w
        valid = m_mask & (ph >= 0) & (pw >= 0) & (ph % stride_h == 0) & (pw % stride_w == 0) & (p < P) & (q < Q)
        g_mask = valid[:, None] & k_mask[None, :]
        g_offs = ((n_img * P + p) * Q + q).to(tl.int64)[:, None] * COUT + co[None, :]
        g = tl.load(gy_ptr + g_offs, mask=g_mask, other=0.0)
        if CHAIN:
            mean = tl.load(mean_ptr + co, mask=k_mask, other=0.0)
            yv = tl.load(y_ptr + g_offs, mask=g_mask, other=0.0).to(mean.dtype)
            gv = g.to(mean.dtype) + (yv - mean[None, :]) * tl.load(a_ptr + co, mask=k_mask, other=0.0)[None, :] \
                + tl.load(c_ptr + co, mask=k_mask, other=0.0)[None, :]
            g = tl.where(g_mask, gv, 0.0).to(gy_ptr.dtype.element_ty)
        b = tl.load(w_ptr + co[:, None] * sw_co + ci[None, :] * sw_ci + r * sw_r + s * sw_s,
                    mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(g, b, acc, input_precision=PRECISION)
    out_mask = m_mask[:, None] & c_mask[None, :]
    offs = rm.to(tl.int64)[:, None] * CIN + ci[None, :]
    if PROLOGUE:
        scale = tl.load(in_scale_ptr + ci, mask=c_mask, other=0.0)
        xc = tl.load(x_ptr + offs, mask=out_mask, other=0.0).to(scale.dtype)
        if PRO_MEAN:
            xc = xc - tl.load(in_mean_ptr + ci, mask=c_mask, other=0.0)[None, :]
        g = acc.to(scale.dtype)
        if PRO_RELU:
            pre = xc * scale[None, :] + tl.load(in_bias_ptr + ci, mask=c_mask, other=0.0)[None, :]
            g = tl.where(pre > 0, g, 0.0)
        g = tl.where(out_mask, g, 0.0)
        tl.store(dx_ptr + offs, (g * scale[None, :]).to(dx_ptr.dtype.element_ty), mask=out_mask)
        tl.store(psum_ptr + pid_m * CIN + ci, tl.sum(g, axis=0), mask=c_mask)
        tl.store(pxs_ptr + pid_m * CIN + ci, tl.sum(g * xc, axis=0), mask=c_mask)
    else:
        tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=out_mask)


def dgrad(grad_y: Tensor, weight: Tensor, x: Tensor, stride: Sequence[int], padding: Sequence[int],
          dilation: Sequence[int], prologue: Optional[Tuple] = None, chain: Optional[Tuple] = None,
          blocks: Tuple[int, int, int] = (32, 16, 16), num_warps: int = 4):
    """(dx, sum g, sum g*(x - in_mean)) with NHWC dx in x's dtype; the sums are None without a prologue.
    prologue = (in_mean or None, in_scale, in_bias, relu) of x; chain = (y, mean, a, c) for dY on load."""
    n, cin, h, w = x.shape
    cout, cin_w, r, s = weight.shape
    if cin_w != cin:
        raise ValueError(f"dgrad supports groups=1 only: weight has {cin_w} input channels, x has {cin}")
    cl = torch.channels_last
    grad_y, x = grad_y.contiguous(memory_format=cl), x.contiguous(memory_format=cl)
    _, _, p, q = grad_y.shape
    in_mean, in_scale, in_bias, relu = prologue if prologue is not None else (None, None, None, False)
    y, mean, a, c = chain if chain is not None else (None, None, None, None)
    y = y.contiguous(memory_format=cl) if y is not None else grad_y
    block_m, block_c, block_k = blocks
    m = n * h * w
    tiles = triton.cdiv(m, block_m)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=cl)
    sdt = in_scale.dtype if in_scale is not None else torch.float32
    parts = [torch.empty((tiles, cin), dtype=sdt, device=x.device) for _ in range(2)] if prologue else [dx, dx]
    dummy = dx
    precision = "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"
    _dgrad_kernel[(tiles, triton.cdiv(cin, block_c))](
        grad_y, y, mean if mean is not None else dummy, a if a is not None else dummy, c if c is not None else dummy,
        weight, x, in_mean if in_mean is not None else dummy, in_scale if in_scale is not None else dummy,
        in_bias if in_bias is not None else dummy, dx, *parts,
        h, w, cin, p, q, cout, m, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *weight.stride(), R=r, S=s, CHAIN=chain is not None, PROLOGUE=prologue is not None,
        PRO_MEAN=in_mean is not None, PRO_RELU=bool(relu), PRECISION=precision,
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_K=block_k, num_warps=num_warps)
    if prologue is None:
        return dx, None, None
    return dx, parts[0].sum(dim=0), parts[1].sum(dim=0)  # fixed order: deterministic
