"""The fused dgrad kernel (resnet_fast/backends/triton/dgrad_kernels.py) against the reference op
conv_bn_stats_backward in float64: dx and the dBN sums, with the BN-statistics chain rule applied to the
incoming gradient on load and the previous BN + ReLU's backward in the epilogue; held to 2x the
reference op's own error in the same dtype. Under TRITON_INTERPRET=1 on CPU (float32, float16)."""

import pytest
import torch

from helpers import assert_close_to_ref
from resnet_fast import reference as ref

from resnet_fast.backends.triton import dgrad_kernels

CL = torch.channels_last
CASES = [(2, 5, 7, 6, 19, 3, 1, 1, 1), (3, 18, 9, 8, 6, 3, 2, 1, 1), (2, 7, 5, 5, 17, 1, 1, 0, 1),
         (2, 6, 8, 7, 5, 1, 2, 0, 1), (1, 4, 8, 7, 5, 3, 1, 2, 2)]


def _backward(dtype, x, gy, gm, gv, pro, wt, y, mean, conv):
    low = lambda t: t.to(dtype) if t is not None and t.dim() == 4 else t  # noqa: E731
    return ref.conv_bn_stats_backward(low(gy), gm, gv, low(x), *pro, True, low(wt), low(y), mean, *conv, 1,
                                      [True, pro[1] is not None, pro[1] is not None, pro[1] is not None, False])


@pytest.mark.parametrize("dtype,case,prologue", [(torch.float32, case, True) for case in CASES] + [
    (torch.float16, CASES[0], True), (torch.float16, CASES[1], True), (torch.float16, CASES[4], True),
    (torch.float32, CASES[1], False)])
def test_dgrad_with_chain_rule_on_load_and_dbn_in_the_epilogue(case, dtype, prologue):
    n, c, h, w, k, r, s, p, d = case
    conv = ([s, s], [p, p], [d, d])
    x = torch.randn(n, c, h, w, dtype=torch.float64) + 0.5
    wt = torch.randn(k, c, r, r, dtype=torch.float64) / (c * r * r) ** 0.5
    pro = (torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5,
           torch.randn(c, dtype=torch.float64)) if prologue else (None, None, None)
    y, mean, _ = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)  # the reference backward recomputes them
    gy, gm, gv = torch.randn_like(y), torch.randn(k, dtype=torch.float64), torch.randn(k, dtype=torch.float64)
    want = _backward(torch.float64, x, gy, gm, gv, pro, wt, y, mean, conv)
    eager = _backward(dtype, x, gy, gm, gv, tuple(v.float() if v is not None else None for v in pro), wt, y,
                      mean.float(), conv)
    count = y.numel() // k
    f32 = lambda t: t.float() if t is not None else None  # noqa: E731
    low = lambda t: t.to(dtype).contiguous(memory_format=CL)  # noqa: E731
    dx, total, xsum = dgrad_kernels.dgrad(
        low(gy), low(wt).contiguous(memory_format=CL), low(x), *conv,
        prologue=(f32(pro[0]), f32(pro[1]), f32(pro[2]), True) if prologue else None,
        chain=(low(y), mean.float(), (gv * 2.0 / count).float(), (gm / count).float()))
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=CL)
    assert_close_to_ref("dx", dx, eager[0], want[0], dtype=dtype)
    if prologue:
        assert_close_to_ref("d in_mean", -pro[1].float() * total, eager[1], want[1], dtype=dtype)
        assert_close_to_ref("d in_scale", xsum, eager[2], want[2], dtype=dtype)
        assert_close_to_ref("d in_bias", total, eager[3], want[3], dtype=dtype)
    else:
        assert total is None and xsum is None


@pytest.mark.parametrize("case", CASES[1:2])
def test_closed_backward_op_matches_the_reference(case):
    from resnet_fast.backends.triton import closed_backward

    n, c, h, w, k, r, s, p, d = case
    conv = ([s, s], [p, p], [d, d])
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    wt = (torch.randn(k, c, r, r) / (c * r * r) ** 0.5).contiguous(memory_format=CL)
    pro = (torch.randn(c), torch.rand(c) + 0.5, torch.randn(c))
    y, mean, _ = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)
    args = (torch.randn_like(y), torch.randn(k), torch.randn(k), x, *pro, True, wt, y, mean, *conv, 1, [True] * 5)
    from resnet_fast.backends.cudnn.engine import primitives

    P = primitives("triton")
    got = closed_backward.conv_bn_stats_backward(P, *args)
    want = ref.conv_bn_stats_backward(*(a.double() if isinstance(a, torch.Tensor) else a for a in args))
    eager = ref.conv_bn_stats_backward(*args)
    for name, g, wnt, e in zip(("dx", "d in_mean", "d in_scale", "d in_bias", "dW"), got, want, eager):
        assert g.dtype == e.dtype
        assert_close_to_ref(name, g, e, wnt)
    # groups: the composite over P (aten dgrad / wgrad) serves it
    wg = wt[:, : c // 2].contiguous(memory_format=CL)
    yg, mg, _ = ref.conv_bn_stats(x, *pro, True, wg, *conv, 2)
    gargs = (*args[:8], wg, yg, mg, *conv, 2, [True] * 5)
    gargs = (torch.randn_like(yg), *gargs[1:])
    for g, w in zip(closed_backward.conv_bn_stats_backward(P, *gargs), ref.conv_bn_stats_backward(*gargs)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
