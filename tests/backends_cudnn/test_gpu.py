"""On a GPU only (skipped here): the cuDNN engine with real cuDNN execution, and the closed Triton backward
compiled, each against the reference ops in float64, held to 2x the reference's own error in the same
dtype; the cuDNN forward captured in a CUDA graph and replayed. None of this has run yet."""

import functools

import pytest
import torch

from helpers import assert_close_to_ref
from resnet_fast import reference as ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CL = torch.channels_last
# (N, C, H, W, K, R, stride, padding): resnet50-like units, small batch
UNITS = [(8, 64, 14, 14, 64, 3, 1, 1), (8, 64, 14, 14, 256, 1, 1, 0), (8, 128, 14, 14, 128, 3, 2, 1)]


def _unit(shape, dtype):
    n, c, h, w, k, r, s, p = shape
    x = (torch.randn(n, c, h, w, device="cuda") + 0.3).to(dtype).contiguous(memory_format=CL)
    wt = (torch.randn(k, c, r, r, device="cuda") / (c * r * r) ** 0.5).to(dtype).contiguous(memory_format=CL)
    pro = (torch.randn(c, device="cuda"), torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda"))
    return x, pro, wt, [s, s], [p, p], [1, 1]


def _f64(args):
    return [a.double() if isinstance(a, torch.Tensor) else a for a in args]


def _check_backward(impl, x, pro, wt, conv, dtype):
    y, mean, _ = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)
    args = [torch.randn_like(y), torch.randn_like(mean) * 0.1, torch.randn_like(mean) * 0.1, x, *pro, True, wt, y,
            mean, *conv, 1, [True] * 5]
    got = impl(*args)
    want, eager = ref.conv_bn_stats_backward(*_f64(args)), ref.conv_bn_stats_backward(*args)
    for name, g, w, e in zip(("dx", "d in_mean", "d in_scale", "d in_bias", "dW"), got, want, eager):
        assert_close_to_ref(name, g, e, w, dtype=dtype, norm="l2")


@pytest.mark.parametrize("shape", UNITS)
def test_cudnn_engine_forward_and_backward(shape):
    pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed")
    from resnet_fast.backends.cudnn import engine

    x, pro, wt, *conv = _unit(shape, torch.float16)
    ops = engine.bound(engine.primitives("triton"))
    with engine.using_fallback({op: _never for op in engine.IMPLEMENTS}):
        got = ops["conv_bn_stats"](x, *pro, True, wt, *conv, 1)
        want = ref.conv_bn_stats(*_f64([x, *pro]), True, wt.double(), *conv, 1)
        eager = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)
        for name, g, w, e in zip(("y", "mean", "var"), got, want, eager):
            assert_close_to_ref(name, g, e, w, dtype=torch.float16, norm="l2")
        _check_backward(ops["conv_bn_stats_backward"], x, pro, wt, conv, torch.float16)


def test_cudnn_forward_replays_in_a_cuda_graph():
    pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed")
    from resnet_fast.backends.cudnn import engine

    x, pro, wt, *conv = _unit(UNITS[0], torch.float16)
    fwd = engine.bound(engine.primitives("triton"))["conv_bn_stats"]
    with engine.using_fallback({op: _never for op in engine.IMPLEMENTS}):
        expected = fwd(x, *pro, True, wt, *conv, 1)  # builds the plan outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fwd(x, *pro, True, wt, *conv, 1)
        x.copy_(x * 0.5)
        graph.replay()
        fresh = fwd(x, *pro, True, wt, *conv, 1)
    for c, f, e in zip(captured, fresh, expected):
        torch.testing.assert_close(c, f)
        assert not torch.equal(c, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", UNITS)
def test_closed_triton_backward_compiled(shape, dtype):
    from resnet_fast.backends.cudnn.engine import primitives
    from resnet_fast.backends.triton import closed_backward

    x, pro, wt, *conv = _unit(shape, dtype)
    _check_backward(functools.partial(closed_backward.conv_bn_stats_backward, primitives("triton")), x, pro, wt,
                    conv, dtype)


def _never(*args):
    raise AssertionError("this call should have been served by cuDNN (no engine on this GPU?)")
