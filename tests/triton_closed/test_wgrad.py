"""The fused wgrad kernel (resnet_fast/backends/triton/wgrad_kernels.py): dW with the BN-statistics chain rule
applied to the incoming gradient and the previous BN + ReLU applied to the input, both on load, against
float64 (dY and the normalized input materialized, then aten's wgrad), held to 2x eager's own error in the
same dtype. Under TRITON_INTERPRET=1 on CPU (float32, float16: the interpreter's bfloat16 dot is wrong)."""

import pytest
import torch

from helpers import assert_close_to_ref

from resnet_fast.backends.triton import wgrad_kernels

CL = torch.channels_last
# (N, C, H, W, K, R, stride, padding, dilation): odd sizes, a strided 3x3, a 1x1, a dilated 3x3
CASES = [(2, 5, 7, 6, 19, 3, 1, 1, 1), (3, 18, 9, 8, 6, 3, 2, 1, 1), (2, 7, 5, 5, 17, 1, 1, 0, 1),
         (1, 4, 8, 7, 5, 3, 1, 2, 2)]


def _wgrad(dy, z, shape, stride, padding, dilation):
    return torch.ops.aten.convolution_backward(dy, z, z.new_empty(shape), None, stride, padding, dilation, False,
                                               [0, 0], 1, [False, True, False])[1]


def _math(x, gy, y, mean, a, c, in_mean, in_scale, in_bias, relu, shape, conv):
    dy = gy if y is None else gy + (y - mean[:, None, None]) * a[:, None, None] + c[:, None, None]
    z = x if in_scale is None else (x - in_mean[:, None, None]) * in_scale[:, None, None] + in_bias[:, None, None]
    z = torch.relu(z) if relu else z
    return _wgrad(dy.to(x.dtype), z.to(x.dtype), shape, *conv)


F32, F16 = torch.float32, torch.float16
# every case with both fusions in both dtypes; each fusion alone / neither once (the suite's time budget)
COMBOS = [(dt, case, True, True) for case in CASES for dt in (F32, F16)] + [
    (F16, CASES[0], True, False), (F32, CASES[1], False, True), (F32, CASES[2], False, False)]


@pytest.mark.parametrize("dtype,case,prologue,chain", COMBOS)
def test_wgrad_with_chain_rule_and_prologue_on_load(case, dtype, prologue, chain):
    n, c, h, w, k, r, s, p, d = case
    conv = ([s, s], [p, p], [d, d])
    x64 = torch.randn(n, c, h, w, dtype=torch.float64)
    pq = [(h + 2 * p - d * (r - 1) - 1) // s + 1, (w + 2 * p - d * (r - 1) - 1) // s + 1]
    gy64, y64 = torch.randn(n, k, *pq, dtype=torch.float64), torch.randn(n, k, *pq, dtype=torch.float64) + 3
    vec = lambda ch: torch.randn(ch, dtype=torch.float64)  # noqa: E731
    mean, a, cc = y64.mean((0, 2, 3)), vec(k) * 0.3, vec(k) * 0.3
    in_mean, in_scale, in_bias = vec(c), vec(c).abs() + 0.5, vec(c)
    args64 = (x64, gy64, y64 if chain else None, mean, a, cc, *((in_mean, in_scale, in_bias) if prologue
                                                                else (None, None, None)), prologue)
    ref = _math(*args64, (k, c, r, r), conv)
    low = lambda t: t.to(dtype) if t is not None else None  # noqa: E731
    xl, gyl, yl = low(x64), low(gy64), low(y64)
    eager = _math(xl, gyl, yl if chain else None, *(t.to(dtype) for t in (mean, a, cc)),
                  *((low(in_mean), low(in_scale), low(in_bias)) if prologue else (None, None, None)), prologue,
                  (k, c, r, r), conv)
    f32 = lambda t: t.float() if t is not None else None  # noqa: E731
    got = wgrad_kernels.wgrad(xl.contiguous(memory_format=CL), gyl.contiguous(memory_format=CL), (k, c, r, r),
                              *conv, prologue=(f32(in_mean), f32(in_scale), f32(in_bias), True) if prologue else None,
                              chain=(yl, f32(mean), f32(a), f32(cc)) if chain else None)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=CL)
    assert_close_to_ref("dW", got, eager, ref, dtype=dtype)


def test_groups_are_refused():
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="groups=1"):
        wgrad_kernels.wgrad(x, torch.randn(1, 4, 5, 5), (4, 2, 3, 3), [1, 1], [1, 1], [1, 1])


def test_the_row_split_does_not_change_the_result():
    x = torch.randn(2, 6, 7, 7).contiguous(memory_format=CL)
    gy = torch.randn(2, 5, 7, 7).contiguous(memory_format=CL)
    args = (x, gy, (5, 6, 3, 3), [1, 1], [1, 1], [1, 1])
    one = wgrad_kernels.wgrad(*args, splits=1)
    torch.testing.assert_close(wgrad_kernels.wgrad(*args, splits=4), one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, _wgrad(gy, x, (5, 6, 3, 3), [1, 1], [1, 1], [1, 1]), rtol=1e-4, atol=1e-4)
