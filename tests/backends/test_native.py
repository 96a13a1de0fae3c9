"""The native backend's own checks: its C++ primitives validate their inputs (no crash when called
directly), and the wrapper maps the C++ bn_act_backward's result order onto the primitive contract."""

import pytest
import torch

import resnet_fast
from helpers import act, vec


@pytest.fixture(autouse=True)
def native_built():
    if resnet_fast.backend_info()["native_extension"] != "loaded":
        pytest.skip("native extension not built")


def test_native_kernel_rejects_bad_layout():
    """The C++ primitives check their own inputs too (no crash if called directly)."""
    x = torch.randn(2, 4, 6, 6)[:, :, ::2]  # neither contiguous nor channels_last
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.resnet_fast_C.channel_stats(x)
    with pytest.raises(RuntimeError, match="scale"):
        torch.ops.resnet_fast_C.bn_act(torch.randn(2, 4, 3, 3), None, torch.ones(3), torch.zeros(4), None, None,
                                       None, None, True)
    with pytest.raises(RuntimeError, match="scale must be Float"):
        torch.ops.resnet_fast_C.bn_act(torch.randn(2, 4, 3, 3), None, torch.ones(4, dtype=torch.float64),
                                       torch.zeros(4), None, None, None, None, True)


@pytest.mark.parametrize("mask", [[True] * 5, [False, True, False, True, False], [True, False, True, False, True]])
def test_bn_act_backward_primitive_matches_eager_backend(mask):
    """native and the plain-PyTorch backend return (dx, dres, Σg, Σg·(x - mean), Σg·(residual - res_mean))
    in the same order, None where not requested."""
    from resnet_fast.backends import eager, native

    shape = (2, 5, 4, 3)
    x, res, g = act(shape, "cpu", offset=1.0), act(shape, "cpu"), act(shape, "cpu")
    mean, scale, rmean, rscale = (vec(5, "cpu") for _ in range(4))
    out = eager.bn_act(x, mean, scale, torch.zeros(5), res, rmean, rscale, torch.zeros(5), True)
    args = (g, out, x, mean, scale, res, rmean, rscale, True, mask)
    for a, b, want in zip(native.bn_act_backward(*args), eager.bn_act_backward(*args), mask):
        assert (a is None) == (b is None) == (not want)
        if want:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
