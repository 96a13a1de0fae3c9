"""The vectorized float32 channels_last CPU primitives (csrc/cpu/nhwc_float_cpu.cpp) against the general
CPU kernels (double math per element) they stand in for, on shapes that cross the 32-row blocks and
the vector width (odd channel counts), with every optional argument and output mask; and the routing
in resnet_fast/backends/native_cpu.py."""

import itertools

import pytest
import torch

from resnet_fast import _dispatch

pytestmark = pytest.mark.skipif(not _dispatch._native_supports("cpu"), reason="native CPU kernels not built")

CL = torch.channels_last
SHAPES = [(3, 37, 13, 11), (2, 8, 2, 1), (1, 131, 7, 5)]


def _lib():
    return torch.ops.resnet_fast_C


def _act(shape, offset=0.0):
    return (torch.randn(shape) * 2 + offset).contiguous(memory_format=CL)


def _close(a, b, name, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_stats(shape):
    y = _act(shape, offset=300.0)  # |mean| >> std: the shifted sums must not cancel
    mean, var = _lib().nhwc_channel_stats(y)
    ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
    _close(mean.double(), ref_mean, "mean", rtol=1e-6, atol=0)
    _close(var.double(), ref_var, "var", rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mean,residual,relu", itertools.product([False, True], ["none", "plain", "dual"],
                                                                  [False, True]))
def test_bn_act_and_backward(shape, mean, residual, relu):
    c = shape[1]
    x, r, g = _act(shape, 1.0), _act(shape), _act(shape)
    vec = [torch.rand(c) + 0.5 for _ in range(6)]
    args = [x, vec[0] if mean else None, vec[1], vec[2] - 0.5, None if residual == "none" else r,
            *([vec[3], vec[4], vec[5]] if residual == "dual" else [None, None, None]), relu]
    out = _lib().nhwc_bn_act(*args)
    _close(out, _lib().bn_act(*args), "bn_act")
    assert out.is_contiguous(memory_format=CL)
    has_res, has_rscale = residual != "none", residual == "dual"
    for mask in itertools.product([False, True], [False, True], [False, True], [has_res], [has_rscale]):
        bwd = [g, out, x, args[1], args[2], args[4], args[5], args[6], relu, list(mask)]
        for name, a, b in zip(("dx", "dscale", "dbias", "dres", "dres_scale"), _lib().nhwc_bn_act_backward(*bwd),
                              _lib().bn_act_backward(*bwd)):
            assert a.shape == b.shape, name
            _close(a, b, name, rtol=1e-4, atol=1e-4)


def test_routing_and_rejects():
    from resnet_fast.backends.native_cpu import _nhwc_float

    assert _nhwc_float(_act((2, 3, 4, 5)))
    assert not _nhwc_float(torch.randn(2, 3, 4, 5))  # NCHW: the general kernels
    assert not _nhwc_float(_act((2, 3, 4, 5)).double())
    assert not _nhwc_float(torch.randn(2, 3, 1, 1))  # both layouts at once: treated as NCHW
    with pytest.raises(RuntimeError, match="float32 channels_last"):
        _lib().nhwc_channel_stats(torch.randn(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="float32 channels_last"):
        _lib().nhwc_bn_act(_act((2, 3, 4, 5)).double(), None, torch.ones(3, dtype=torch.float64),
                           torch.zeros(3, dtype=torch.float64), None, None, None, None, False)
