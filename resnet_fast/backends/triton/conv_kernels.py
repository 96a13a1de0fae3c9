"""Convolution as an implicit GEMM in Triton over NHWC activations, with the BatchNorm fusions.

    Y[m, co] = sum_k A[m, k] * B[k, co],  m = (n, p, q) an output pixel, k = (r, s, ci) a filter tap,
    A[m, k] = prologue(x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, ci])   (0 outside the image),
    B[k, co] = W[co, ci, r, s].

Prologue (training): the previous BatchNorm + ReLU, act((x - mean)*scale + bias), applied to A as it is
loaded; zero padding is applied after it (a padded tap contributes 0, not act(bias)).
Epilogue, one of:
  STATS (training)  store y, and per 64-row tile and channel the mean and M2 of the stored values
                    (Chan partials; bn_kernels._stats_merge_kernel reduces them);
  BIAS  (eval)      act(acc + bias [+ residual]) with BatchNorm folded into W and bias.
Groups (ResNeXt) run as a third grid axis; the K loop walks (r, s) taps and BLOCK_K-channel slices
of one group as a single flat loop (no nested KxK loop: DESIGN.md notes a Triton miscompile there).
1x1 convs are the special case R = S = 1 (a plain GEMM over NHWC rows).
"""

import triton
import triton.language as tl

from .bn_kernels import _relu, tile_stats

EPI_NONE, EPI_STATS, EPI_BIAS = 0, 1, 2


@triton.jit
def _conv_fwd_kernel(
    x_ptr,                               # [N, H, W, CIN] contiguous (NHWC)
    w_ptr,                               # [COUT, CIN_G, R, S] with strides (sw_co, sw_ci, sw_r, sw_s)
    y_ptr,                               # [N, P, Q, COUT] contiguous (NHWC)
    in_mean_ptr, in_scale_ptr, in_bias_ptr,   # [CIN] prologue vectors, stat dtype
    bias_ptr, res_ptr,                   # [COUT] and [N, P, Q, COUT] (EPI_BIAS)
    pmean_ptr, pm2_ptr,                  # [cdiv(M, BLOCK_M), COUT] stat dtype (EPI_STATS)
    H, W, CIN, P, Q, COUT, CIN_G, COUT_G, M,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sw_co, sw_ci, sw_r, sw_s,
    R: tl.constexpr, S: tl.constexpr,
    PROLOGUE: tl.constexpr, PRO_MEAN: tl.constexpr, PRO_RELU: tl.constexpr,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    grp = tl.program_id(2)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # output pixels
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # output channels within the group
    m_mask = rm < M
    n_mask = rn < COUT_G
    co = grp * COUT_G + rn
    n_img = rm // (P * Q)
    pq = rm % (P * Q)
    ih0 = (pq // Q) * stride_h - pad_h
    iw0 = (pq % Q) * stride_w - pad_w
    rk = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    num_cb = tl.cdiv(CIN_G, BLOCK_K)
    for it in range(0, R * S * num_cb):
        rs = it // num_cb
        r = rs // S
        s = rs % S
        ci_g = (it % num_cb) * BLOCK_K + rk               # channel within the group
        k_mask = ci_g < CIN_G
        ci = grp * CIN_G + ci_g
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_mask = valid[:, None] & k_mask[None, :]
        pix = ((n_img * H + ih) * W + iw).to(tl.int64) * CIN
        a = tl.load(x_ptr + pix[:, None] + ci[None, :], mask=a_mask, other=0.0)
        if PROLOGUE:
            scale = tl.load(in_scale_ptr + ci, mask=k_mask, other=0.0)
            v = a.to(scale.dtype)
            if PRO_MEAN:
                v = v - tl.load(in_mean_ptr + ci, mask=k_mask, other=0.0)[None, :]
            v = v * scale[None, :] + tl.load(in_bias_ptr + ci, mask=k_mask, other=0.0)[None, :]
            if PRO_RELU:
                v = _relu(v)
            a = tl.where(a_mask, v, 0.0).to(x_ptr.dtype.element_ty)  # padding after the prologue
        b = tl.load(w_ptr + co[None, :] * sw_co + ci_g[:, None] * sw_ci + r * sw_r + s * sw_s,
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    out_mask = m_mask[:, None] & n_mask[None, :]
    y_offs = rm.to(tl.int64)[:, None] * COUT + co[None, :]
    if EPILOGUE == 2:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + y_offs, mask=out_mask, other=0.0).to(tl.float32)
        if RELU:
            acc = _relu(acc)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_offs, y, mask=out_mask)
    if EPILOGUE == 1:
        # Statistics of the values as stored (what eager BatchNorm sees), in the stat dtype.
        count = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(pmean_ptr.dtype.element_ty)
        mean, m2 = tile_stats(y.to(pmean_ptr.dtype.element_ty), m_mask, count)
        tl.store(pmean_ptr + pid_m * COUT + co, mean, mask=n_mask)
        tl.store(pm2_ptr + pid_m * COUT + co, m2, mask=n_mask)
