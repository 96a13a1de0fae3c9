"""Convolution as an implicit GEMM in Triton over NHWC activations, with the BatchNorm fusions.

    Y[m, co] = sum_k A[m, k] * B[k, co],  m = (n, p, q) an output pixel, k = (r, s, ci) a filter tap,
    A[m, k] = prologue(x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, ci])   (0 outside the image),
    B[k, co] = W[co, ci, r, s].

Prologue (training): the previous BatchNorm + ReLU, act((x - mean)*scale + bias), applied to A as it is
loaded; zero padding is applied after it (a padded tap contributes 0, not act(bias)).
Epilogue, one of:
  STATS (training)  store y, and per BLOCK_M-row tile and channel the mean and M2 of the stored values
                    (Chan partials; bn_kernels._stats_merge_kernel reduces them);
  bias  (eval)      act(acc + bias [+ residual]) with BatchNorm folded into W and bias.
K loop:
  R = S = 1 (36 of resnet50's 53 convs) is a plain GEMM over NHWC rows: its own constexpr path whose
  A and B pointers just advance by BLOCK_K channels per step, so Triton pipelines both tiles
  (cp.async ring) with no per-step index math;
  R*S > 1 walks (r, s) taps and BLOCK_K-channel slices of one group as one flat loop (a nested
  non-unrolled KxK loop has miscompiled in Triton with num_warps=8), the tap and block counters
  carried as scalars: per step only a scalar offset and the tap's row mask change.
Index math that does not depend on the step (pixel decode, int64 row offsets, weight pointers) is
done once per program; with one channel block (CIN_G <= BLOCK_K, the ONE_CB constexpr) the prologue
vectors are loaded once too. Programs: one flat axis with the BLOCK_N tiles of a row block
consecutive (N fastest), so programs that read the same activation tile run together and hit L2
(the weights are small and every program reuses them); groups (ResNeXt) are the second axis.
Shape integers that only bound masks (H, W, P, Q, M, strides, padding, dilation) are in
do_not_specialize: Triton would otherwise compile a new variant for each that equals 1 or is
divisible by 16; channel counts and weight strides stay specialized (they decide the alignment of
vector loads).
"""

import triton
import triton.language as tl

from .bn_kernels import _relu, tile_stats


@triton.jit
def _prologue_vectors(in_mean_ptr, in_scale_ptr, in_bias_ptr, ci, k_mask, PRO_MEAN: tl.constexpr):
    """(mean, scale, bias) of channels ci [BLOCK_K] in the stat dtype (mean = 0 without PRO_MEAN)."""
    scale = tl.load(in_scale_ptr + ci, mask=k_mask, other=0.0)
    bias = tl.load(in_bias_ptr + ci, mask=k_mask, other=0.0)
    if PRO_MEAN:
        mean = tl.load(in_mean_ptr + ci, mask=k_mask, other=0.0)
    else:
        mean = tl.zeros_like(scale)
    return mean, scale, bias


@triton.jit
def _apply_prologue(a, a_mask, mean, scale, bias, PRO_MEAN: tl.constexpr, PRO_RELU: tl.constexpr):
    """act((a - mean)*scale + bias) on an A tile [BLOCK_M, BLOCK_K]; zero where a_mask is off (padding
    is applied after the prologue: a padded tap contributes 0, not act(bias))."""
    v = a.to(scale.dtype)
    if PRO_MEAN:
        v = v - mean[None, :]
    v = v * scale[None, :] + bias[None, :]
    if PRO_RELU:
        v = _relu(v)
    return tl.where(a_mask, v, 0.0).to(a.dtype)


@triton.jit(do_not_specialize=["H", "W", "P", "Q", "M", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"])
def _conv_fwd_kernel(
    x_ptr,                               # [N, H, W, CIN] contiguous (NHWC)
    w_ptr,                               # [COUT, CIN_G, R, S] with strides (sw_co, sw_ci, sw_r, sw_s)
    y_ptr,                               # [N, P, Q, COUT] contiguous (NHWC)
    in_mean_ptr, in_scale_ptr, in_bias_ptr,   # [CIN] prologue vectors, stat dtype
    bias_ptr, res_ptr,                   # [COUT] and [N, P, Q, COUT] (bias epilogue)
    pmean_ptr, pm2_ptr,                  # [cdiv(M, BLOCK_M), COUT] stat dtype (STATS)
    H, W, CIN, P, Q, COUT, CIN_G, COUT_G, M,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sw_co, sw_ci, sw_r, sw_s,
    R: tl.constexpr, S: tl.constexpr, ONE_CB: tl.constexpr,
    PROLOGUE: tl.constexpr, PRO_MEAN: tl.constexpr, PRO_RELU: tl.constexpr,
    STATS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tiles_n = tl.cdiv(COUT_G, BLOCK_N)
    pid_m = tl.program_id(0) // tiles_n
    pid_n = tl.program_id(0) % tiles_n
    grp = tl.program_id(1)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # output pixels
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # output channels within the group
    m_mask = rm < M
    n_mask = rn < COUT_G
    co = grp * COUT_G + rn
    n_img = rm // (P * Q)
    pq = rm % (P * Q)
    ih0 = (pq // Q) * stride_h - pad_h                    # input row / column of tap (0, 0)
    iw0 = (pq % Q) * stride_w - pad_w
    rk = tl.arange(0, BLOCK_K)
    ci0 = grp * CIN_G + rk                                # input channels of the first block
    # Pointers of tap (0, 0), channel block 0; tap (r, s), block cb adds (r*dh*W + s*dw)*CIN + cb*BLOCK_K
    # to A and r*sw_r + s*sw_s + cb*BLOCK_K*sw_ci to B (scalars).
    a_ptrs = x_ptr + (((n_img * H + ih0) * W + iw0).to(tl.int64) * CIN)[:, None] + ci0[None, :]
    b_ptrs = w_ptr + co[None, :] * sw_co + rk[:, None] * sw_ci
    b_nmask = n_mask[None, :]
    if PROLOGUE and ONE_CB:
        mean, scale, bias = _prologue_vectors(in_mean_ptr, in_scale_ptr, in_bias_ptr, ci0, rk < CIN_G, PRO_MEAN)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    num_cb = tl.cdiv(CIN_G, BLOCK_K)
    if R * S == 1:
        valid = (m_mask & (ih0 >= 0) & (ih0 < H) & (iw0 >= 0) & (iw0 < W))[:, None]
        for kb in range(0, num_cb):
            k_mask = rk < CIN_G - kb * BLOCK_K
            a_mask = valid & k_mask[None, :]
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
            if PROLOGUE:
                if not ONE_CB:
                    mean, scale, bias = _prologue_vectors(in_mean_ptr, in_scale_ptr, in_bias_ptr,
                                                          ci0 + kb * BLOCK_K, k_mask, PRO_MEAN)
                a = _apply_prologue(a, a_mask, mean, scale, bias, PRO_MEAN, PRO_RELU)
            b = tl.load(b_ptrs, mask=k_mask[:, None] & b_nmask, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K * sw_ci
    else:
        cb = pid_n * 0                                    # channel block, tap column, tap row (scalars)
        s = cb
        r = cb
        for _ in range(0, R * S * num_cb):
            dh = r * dil_h
            dw = s * dil_w
            valid = m_mask & (ih0 >= -dh) & (ih0 < H - dh) & (iw0 >= -dw) & (iw0 < W - dw)
            k_mask = rk < CIN_G - cb * BLOCK_K
            a_mask = valid[:, None] & k_mask[None, :]
            a = tl.load(a_ptrs + ((dh * W + dw) * CIN + cb * BLOCK_K), mask=a_mask, other=0.0)
            if PROLOGUE:
                if not ONE_CB:
                    mean, scale, bias = _prologue_vectors(in_mean_ptr, in_scale_ptr, in_bias_ptr,
                                                          ci0 + cb * BLOCK_K, k_mask, PRO_MEAN)
                a = _apply_prologue(a, a_mask, mean, scale, bias, PRO_MEAN, PRO_RELU)
            b = tl.load(b_ptrs + (r * sw_r + s * sw_s + cb * BLOCK_K * sw_ci), mask=k_mask[:, None] & b_nmask,
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            cb += 1                                       # next: channel blocks fastest, then s, then r
            wrap = cb == num_cb
            cb = tl.where(wrap, 0, cb)
            s = tl.where(wrap, s + 1, s)
            wrap = s == S
            s = tl.where(wrap, 0, s)
            r = tl.where(wrap, r + 1, r)

    out_mask = m_mask[:, None] & n_mask[None, :]
    y_offs = rm.to(tl.int64)[:, None] * COUT + co[None, :]
    if not STATS:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + y_offs, mask=out_mask, other=0.0).to(tl.float32)
        if RELU:
            acc = _relu(acc)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_offs, y, mask=out_mask)
    if STATS:
        # Statistics of the values as stored (what eager BatchNorm sees), in the stat dtype.
        count = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(pmean_ptr.dtype.element_ty)
        mean, m2 = tile_stats(y.to(pmean_ptr.dtype.element_ty), m_mask, count)
        tl.store(pmean_ptr + pid_m * COUT + co, mean, mask=n_mask)
        tl.store(pm2_ptr + pid_m * COUT + co, m2, mask=n_mask)
