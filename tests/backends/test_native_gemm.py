"""The native backend's GEMM convolutions on CPU (resnet_fast/backends/native_gemm.py) against float64
F.conv2d: forward, dgrad and wgrad of 1x1 convs at stride 1 and 2 (odd sizes), the im2col weight gradient
of k x k convs (padding, stride, dilation), which calls take which path, and that a resnet50 training
step really runs through them."""

import pytest
import torch
import torch.nn.functional as F

import resnet_fast
from resnet_fast.backends import native_gemm
from helpers import assert_close_to_ref

CL = torch.channels_last

# (N, C, H, W, Co, kernel, stride, padding, dilation)
CASES = [
    (2, 19, 7, 5, 23, 1, 1, 0, 1),
    (3, 16, 9, 7, 12, 1, 2, 0, 1),   # odd sizes at stride 2: ceil(H/2) rows
    (2, 11, 6, 6, 9, 3, 1, 1, 1),
    (2, 8, 9, 7, 13, 3, 2, 1, 1),
    (1, 5, 11, 10, 6, 3, 1, 2, 2),   # dilation
    (2, 6, 8, 8, 7, 3, 1, 0, 1),     # no padding
]


def _run(conv, x, w, g, stride, padding, dilation, need_x=True):
    x = x.detach().requires_grad_(need_x)
    w = w.detach().requires_grad_()
    y = conv(x, w, [stride] * 2, [padding] * 2, [dilation] * 2, 1)
    y.backward(g)
    return y.detach(), (x.grad if need_x else None), w.grad


def _aten(x, w, stride, padding, dilation, groups):
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("need_x", [True, False])
def test_matches_float64(case, need_x):
    n, c, h, w_, co, k, stride, padding, dilation = case
    x = torch.randn(n, c, h, w_).contiguous(memory_format=CL)
    w = torch.randn(co, c, k, k).contiguous(memory_format=CL)
    expected = "gemm" if k == 1 else "wgrad"
    assert native_gemm.plan(x, w, [stride] * 2, [padding] * 2, [dilation] * 2, 1) == expected
    g = torch.randn_like(_aten(x, w, stride, padding, dilation, 1))
    fast = _run(native_gemm.conv2d, x, w, g, stride, padding, dilation, need_x)
    eager = _run(_aten, x, w, g, stride, padding, dilation, need_x)
    ref = _run(_aten, x.double(), w.double(), g.double(), stride, padding, dilation, need_x)
    assert fast[0].is_contiguous(memory_format=CL) and fast[0].dtype == torch.float32
    for name, f, e, r in zip(("y", "dx", "dw"), fast, eager, ref):
        if r is None:
            assert f is None
            continue
        assert f.shape == r.shape
        assert_close_to_ref(name, f, e, r)


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((1, 1), (2, 1), (0, 0), (1, 1)),     # 1x1, stride 2 along H only
    ((1, 3), (1, 2), (0, 1), (1, 1)),     # a non-square kernel
    ((3, 3), (2, 1), (1, 2), (1, 2)),     # asymmetric stride, padding, dilation
    ((1, 1), (3, 3), (1, 1), (1, 1)),     # a padded 1x1 at stride 3: the im2col weight gradient
])
@pytest.mark.parametrize("grad_layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("weight_layout", ["channels_last", "nchw"])
def test_layouts_and_asymmetric_geometry(kernel, stride, padding, dilation, grad_layout, weight_layout):
    """grad_y and the weight in either layout (grad_y NCHW: e.g. from a user's op after the conv), non-square
    and asymmetric geometry; the weight gradient comes back in the weight's own layout, as aten's does."""
    x = torch.randn(2, 7, 9, 8, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.randn(5, 7, *kernel, dtype=torch.float64)
    w = w.contiguous(memory_format=CL) if weight_layout == "channels_last" else w.contiguous()
    args = (list(stride), list(padding), list(dilation), 1)
    assert native_gemm.plan(x, w, *args) is not None
    results = []
    for conv in (native_gemm.conv2d, _aten):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = conv(xi, wi, *args)
        g = torch.ones_like(y).cumsum(-1).sin()
        g = g.contiguous(memory_format=CL) if grad_layout == "channels_last" else g.contiguous()
        y.backward(g)
        results.append((y.detach(), xi.grad, wi.grad))
    for name, fast, ref in zip(("y", "dx", "dw"), *results):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
    assert results[0][0].is_contiguous(memory_format=CL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_gradcheck_float64(case):
    n, c, h, w_, co, k, stride, padding, dilation = case
    x = torch.randn(n, c, h, w_, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(co, c, k, k, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    assert native_gemm.plan(x, w, [stride] * 2, [padding] * 2, [dilation] * 2, 1) is not None
    torch.autograd.gradcheck(
        lambda a, b: native_gemm.conv2d(a.contiguous(memory_format=CL), b, [stride] * 2, [padding] * 2,
                                        [dilation] * 2, 1), (x, w))


def test_plan_takes_aten_elsewhere(monkeypatch):
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    w1, w3 = torch.randn(8, 8, 1, 1), torch.randn(8, 8, 3, 3)
    one = ([1, 1], [0, 0], [1, 1])
    assert native_gemm.plan(x, w1, *one, 1) == "gemm"
    assert native_gemm.plan(x.contiguous(), w1, *one, 1) is None                 # NCHW input
    assert native_gemm.plan(x, torch.randn(8, 4, 1, 1), *one, 2) is None          # groups
    assert native_gemm.plan(x, w1, [1, 1], [1, 1], [1, 1], 1) == "wgrad"          # a padded 1x1: im2col
    assert native_gemm.plan(x.half(), w1.half(), *one, 1) is None                 # half precision
    big = torch.randn(1, 8, 64, 64).contiguous(memory_format=CL)                  # M = 4096 rows
    assert native_gemm.plan(big, w1, *one, 1) is None
    assert native_gemm.plan(big, w1, [2, 2], [0, 0], [1, 1], 1) == "gemm"         # M = 1024 after the stride
    assert native_gemm.plan(x, w3, [1, 1], [1, 1], [1, 1], 1) == "wgrad"
    assert native_gemm.plan(big, w3, [1, 1], [1, 1], [1, 1], 1) is None
    assert native_gemm.plan(torch.randn(2, 0, 6, 6).contiguous(memory_format=CL), torch.randn(8, 0, 1, 1),
                            *one, 1) is None                                      # no input channels
    assert native_gemm.plan(x, torch.randn(0, 8, 1, 1), *one, 1) is None          # no output channels
    with torch.autocast("cpu", dtype=torch.bfloat16):                             # aten's conv casts, mm would too
        assert native_gemm.plan(x, w1, *one, 1) is None
    monkeypatch.setenv("RESNET_FAST_CPU_GEMM_CONV", "0")
    assert native_gemm.plan(x, w1, *one, 1) is None


def _backward_nodes(t):
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def test_resnet50_training_step_runs_through_the_gemms(monkeypatch):
    """A resnet50 training step at batch 2 x 64² takes both paths (every conv after the stem is small), and
    gives what the same model gives with the path turned off (aten's convolutions)."""
    torch.manual_seed(0)
    model = resnet_fast.resnet50(num_classes=10).to(memory_format=CL).train()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=CL)
    results = {}
    for enabled in ("1", "0"):
        monkeypatch.setenv("RESNET_FAST_CPU_GEMM_CONV", enabled)
        model.zero_grad(set_to_none=True)
        out = model(x)
        names = _backward_nodes(out)
        out.square().mean().backward()
        results[enabled] = (out.detach(), [p.grad for p in model.parameters()], names)
    assert {"_Conv1x1GemmBackward", "_ConvGemmWgradBackward"} <= results["1"][2]
    assert not {"_Conv1x1GemmBackward", "_ConvGemmWgradBackward"} & results["0"][2]
    # Two float32 summation orders: relative L2 distance (a ReLU decision within rounding may flip an element).
    for a, b in zip([results["1"][0]] + results["1"][1], [results["0"][0]] + results["0"][1]):
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6, (a - b).norm() / b.norm()
