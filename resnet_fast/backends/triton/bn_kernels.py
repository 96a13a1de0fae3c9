"""Triton kernels for the memory-bound parts of BatchNorm: statistics partials and their merge,
BN apply (+ residual / dual BN) (+ ReLU), and its backward (elementwise grads + per-channel partial sums).

Every activation is viewed as rows of an NHWC tensor: [M, C] row-major, M = N*H*W (the backend
converts to channels_last first). Per-channel vectors are float32 (float64 for float64 activations);
math runs in that "stat" dtype. No atomics: per-row-block partials are reduced in a fixed order, so
results are deterministic run to run.
"""

import triton
import triton.language as tl


@triton.jit
def _relu(v):
    # torch.relu keeps NaN (NaN < 0 is false); tl.maximum would turn it into 0.
    return tl.where(v < 0, 0.0, v)


@triton.jit
def _row_tile(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_M, BLOCK_C] tile of an [M, C] row-major tensor: (cols, column mask,
    element mask, element offsets)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    return cols, cmask, mask, rows.to(tl.int64)[:, None] * C + cols[None, :]


@triton.jit
def _load_centered(ptr, offs, mask, mean_ptr, cols, cmask, HAS_MEAN: tl.constexpr):
    """t - mean (per column) in the stat dtype (mean_ptr's; the launcher passes a stat-dtype vector
    as mean_ptr when there is no mean); just t without a mean."""
    t = tl.load(ptr + offs, mask=mask, other=0.0).to(mean_ptr.dtype.element_ty)
    if HAS_MEAN:
        t = t - tl.load(mean_ptr + cols, mask=cmask, other=0.0)[None, :]
    return t


@triton.jit
def _bn_act_fwd_kernel(
    x_ptr, out_ptr,                      # [M, C] activation dtype
    mean_ptr, scale_ptr, bias_ptr,       # [C] stat dtype
    res_ptr,                             # [M, C] (RES_MODE > 0)
    rmean_ptr, rscale_ptr, rbias_ptr,    # [C] (RES_MODE == 2)
    M, C,
    HAS_MEAN: tl.constexpr, RES_MODE: tl.constexpr, HAS_RMEAN: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = act((x - mean)*scale + bias + r), r = 0 (RES_MODE 0), residual (1),
    (residual - rmean)*rscale + rbias (2, dual BN)."""
    cols, cmask, mask, offs = _row_tile(M, C, BLOCK_M, BLOCK_C)
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    v = _load_centered(x_ptr, offs, mask, mean_ptr, cols, cmask, HAS_MEAN)
    v = v * scale[None, :] + tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
    if RES_MODE == 1:
        v = v + tl.load(res_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    if RES_MODE == 2:
        r = _load_centered(res_ptr, offs, mask, rmean_ptr, cols, cmask, HAS_RMEAN)
        v = v + r * tl.load(rscale_ptr + cols, mask=cmask, other=0.0)[None, :] \
            + tl.load(rbias_ptr + cols, mask=cmask, other=0.0)[None, :]
    if RELU:
        v = _relu(v)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_act_bwd_kernel(
    gout_ptr, out_ptr, x_ptr,            # [M, C]: grad of the output, the output (ReLU mask), the input
    mean_ptr, scale_ptr,                 # [C]
    res_ptr, rmean_ptr, rscale_ptr,      # [M, C], [C], [C]
    dx_ptr, dres_ptr,                    # [M, C] outputs
    psum_ptr, pxs_ptr, prs_ptr,          # [cdiv(M, BLOCK_M), C] partial sums, stat dtype
    M, C,
    HAS_MEAN: tl.constexpr, DUAL: tl.constexpr, HAS_RMEAN: tl.constexpr, RELU: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DRES: tl.constexpr, NEED_SUM: tl.constexpr, NEED_XSUM: tl.constexpr,
    NEED_RSUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """g = grad_out * (out > 0 when RELU); dx = g*scale; dres = g*rscale (DUAL) or g;
    partials of sum g, sum g*(x - mean), sum g*(residual - rmean) for this block of rows."""
    cols, cmask, mask, offs = _row_tile(M, C, BLOCK_M, BLOCK_C)
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    sdt = scale.dtype
    g = tl.load(gout_ptr + offs, mask=mask, other=0.0).to(sdt)
    if RELU:
        o = tl.load(out_ptr + offs, mask=mask, other=0.0)
        g = tl.where(o > 0, g, 0.0)
    if NEED_DX:
        tl.store(dx_ptr + offs, (g * scale[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_DRES:
        if DUAL:
            d = g * tl.load(rscale_ptr + cols, mask=cmask, other=0.0)[None, :]
        else:
            d = g
        tl.store(dres_ptr + offs, d.to(dres_ptr.dtype.element_ty), mask=mask)
    poffs = tl.program_id(0) * C + cols
    if NEED_SUM:
        tl.store(psum_ptr + poffs, tl.sum(g, axis=0), mask=cmask)
    if NEED_XSUM:
        xc = _load_centered(x_ptr, offs, mask, mean_ptr, cols, cmask, HAS_MEAN)
        tl.store(pxs_ptr + poffs, tl.sum(g * xc, axis=0), mask=cmask)
    if NEED_RSUM:
        rc = _load_centered(res_ptr, offs, mask, rmean_ptr, cols, cmask, HAS_RMEAN)
        tl.store(prs_ptr + poffs, tl.sum(g * rc, axis=0), mask=cmask)


@triton.jit
def tile_stats(v, row_mask, count):
    """Per-column mean and M2 (sum of squared deviations from that mean) of the valid rows of a
    [BLOCK_M, BLOCK_C] tile holding `count` valid rows: the partials Chan's merge combines."""
    v = tl.where(row_mask[:, None], v, 0.0)
    mean = tl.sum(v, axis=0) / count
    d = tl.where(row_mask[:, None], v - mean[None, :], 0.0)
    return mean, tl.sum(d * d, axis=0)


@triton.jit
def _channel_stats_partial_kernel(
    y_ptr,                               # [M, C]
    pmean_ptr, pm2_ptr,                  # [cdiv(M, BLOCK_M), C] stat dtype
    M, C,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rmask = rows < M
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    v = tl.load(y_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(pmean_ptr.dtype.element_ty)
    count = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(v.dtype)
    mean, m2 = tile_stats(v, rmask, count)
    tl.store(pmean_ptr + pid_m * C + cols, mean, mask=cmask)
    tl.store(pm2_ptr + pid_m * C + cols, m2, mask=cmask)


@triton.jit
def _stats_merge_kernel(
    pmean_ptr, pm2_ptr,                  # [T, C]: tile t holds min(TILE_M, M - t*TILE_M) rows
    out_mean_ptr, out_m2_ptr,            # [G, C]: group g = tiles [g*GROUP_T, (g+1)*GROUP_T)
    T, M, C, TILE_M, GROUP_T,
    FINAL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Chan's parallel merge of one group of tiles, in two fixed-order passes: mean = sum n_t m_t / n,
    then M2 = sum (M2_t + n_t (m_t - mean)^2), n = the group's rows. No cancellation: every term is a
    deviation from a mean, never E[y^2] - E[y]^2. Run twice: groups of tiles (many programs), then
    FINAL over the groups (whose sizes follow the same rule with TILE_M*GROUP_T), storing M2/n = var."""
    g = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    t_lo = g * GROUP_T
    t_hi = tl.minimum(t_lo + GROUP_T, T)
    rows = tl.minimum(M - t_lo * TILE_M, GROUP_T * TILE_M).to(out_mean_ptr.dtype.element_ty)
    acc = tl.zeros([BLOCK_C], dtype=out_mean_ptr.dtype.element_ty)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < t_hi
        n = tl.minimum(M - t * TILE_M, TILE_M).to(acc.dtype)
        m = tl.load(pmean_ptr + t[:, None] * C + cols[None, :], mask=tmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.sum(tl.where(tmask[:, None], n[:, None] * m, 0.0), axis=0)
    mean = acc / rows
    acc2 = tl.zeros([BLOCK_C], dtype=out_mean_ptr.dtype.element_ty)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < t_hi
        n = tl.minimum(M - t * TILE_M, TILE_M).to(acc.dtype)
        lmask = tmask[:, None] & cmask[None, :]
        m = tl.load(pmean_ptr + t[:, None] * C + cols[None, :], mask=lmask, other=0.0)
        m2 = tl.load(pm2_ptr + t[:, None] * C + cols[None, :], mask=lmask, other=0.0)
        d = m - mean[None, :]
        acc2 += tl.sum(tl.where(tmask[:, None], m2 + n[:, None] * d * d, 0.0), axis=0)
    if FINAL:
        acc2 = acc2 / rows
    tl.store(out_mean_ptr + g * C + cols, mean, mask=cmask)
    tl.store(out_m2_ptr + g * C + cols, acc2, mask=cmask)
