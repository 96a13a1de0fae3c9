"""Comparison helpers: a fused result is held to at most 2x eager's own error against float64,
plus a small absolute tolerance, and a failure says where and by how much."""

from typing import Optional

import torch

# Absolute slack added to 2x eager's error, relative to the float64 reference's largest magnitude.
REL_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}


TRIM = 1e-3


def _trimmed_l2(t: torch.Tensor) -> float:
    sq = t.reshape(-1).square()
    drop = int(sq.numel() * TRIM)
    if drop:  # zero the `drop` largest terms (topk: a full sort of 100M-element gradient groups took seconds)
        sq = sq.clone()
        sq[sq.topk(drop, sorted=False).indices] = 0
    return sq.sum().sqrt().item()


def _describe(diff: torch.Tensor) -> str:
    flat = diff.reshape(-1)
    i = int(flat.argmax())
    idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), diff.shape)) if diff.dim() else ()
    return f"max {flat[i].item():.3e} at {idx}"


def assert_close_to_ref(name: str, fast: torch.Tensor, eager: Optional[torch.Tensor], ref: torch.Tensor,
                        dtype: Optional[torch.dtype] = None, factor: float = 2.0, norm: str = "max") -> None:
    """err(fast) <= factor * err(eager) + atol, err = the max-abs (norm="max") or trimmed L2 (norm="l2")
    distance to the float64 reference; eager None means atol alone. atol is REL_ATOL[dtype] times
    the reference's size (max-abs or L2, at least 1).

    Trimmed L2 leaves out the largest TRIM fraction of element errors: where a value lies within
    rounding of a ReLU's or max-pool's decision boundary, float32 takes the other branch in one run
    and not another, moving a few gradient elements by O(1) in eager and fused alike, at random.
    Everything else, and every tensor in float64, is compared in full."""
    dtype = dtype or fast.dtype
    assert fast.shape == ref.shape, f"{name}: shape {tuple(fast.shape)} != reference {tuple(ref.shape)}"
    f = fast.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    bad = ~torch.isfinite(f)
    assert not bad.any() or torch.equal(bad, ~torch.isfinite(r)), f"{name}: {int(bad.sum())} non-finite values"
    if not r.numel():
        return
    size = (lambda t: t.abs().max().item()) if norm == "max" else _trimmed_l2
    atol = REL_ATOL[dtype] * max(1.0, size(r))
    diff = (f - r).abs()
    eager_err = size(eager.detach().to(torch.float64).cpu() - r) if eager is not None else 0.0
    limit = factor * eager_err + atol
    if size(diff) > limit:
        raise AssertionError(f"{name}: fused {norm} error {size(diff):.3e} ({_describe(diff)}) exceeds "
                             f"{factor} x eager error {eager_err:.3e} + atol {atol:.3e}")
