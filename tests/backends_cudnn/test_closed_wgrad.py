"""The closed-wgrad+cudnn-dgrad backward engine (Triton wgrad with the prologue on load, cuDNN dgrad_dbn graph
for dx and the dBN sums) on CPU: the Triton wgrad interpreted, the cuDNN graph run by TorchExecutor (its math in
torch on exactly the bound tensors) or logged by Recording; through torch.ops.resnet_fast and autograd with
use_engine and a dispatch-table entry, the five gradients against the float64 reference held to 2x eager's
error in the same dtype. The engine is declared for CUDA only: the CPU tests widen its devices. On a GPU
(skipped here, never run yet) with real cuDNN execution, bfloat16 included."""

import pytest
import torch
from helpers import assert_close_to_ref

import resnet_fast
from resnet_fast import backends, ops
from resnet_fast import reference as ref
from resnet_fast.backends import tables
from resnet_fast.backends.cudnn import closed_wgrad, engine
from resnet_fast.backends.cudnn.execute import Recording, TorchExecutor, check_bindings

CL = torch.channels_last
NAME = "closed-wgrad+cudnn-dgrad"
NAMES = ("x", "in_mean", "in_scale", "in_bias", "weight")
BWD = "conv_bn_stats_backward"


@pytest.fixture
def on_cpu(monkeypatch):
    """The engine may serve CPU tensors (its graphs by TorchExecutor); returns the wgrad calls' dtypes."""
    spec = backends.TRITON_ENGINES[BWD][NAME]
    monkeypatch.setitem(backends.TRITON_ENGINES[BWD], NAME, spec.__class__(spec.target, spec.dtypes + (torch.float32,),
                                                                          ("cuda", "cpu"), None))
    calls, real = [], closed_wgrad.closed_wgrad
    monkeypatch.setattr(closed_wgrad, "closed_wgrad", lambda x, *a, **k: calls.append(x.dtype) or real(x, *a, **k))
    with engine.use_executor(TorchExecutor()):
        yield calls


def _case(shape, device="cpu"):
    n, c, h, w, k, r, s, p = shape
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(n, c, h, w, **f64) + 0.5
    wt = torch.randn(k, c, r, r, **f64) / (c * r * r) ** 0.5
    pro = (torch.randn(c, **f64), torch.rand(c, **f64) + 0.5, torch.randn(c, **f64))
    conv = ([s, s], [p, p], [1, 1])
    y = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)[0]
    return x, pro, wt, conv, (torch.randn_like(y), torch.randn(k, **f64), torch.randn(k, **f64))


def _grads(fn, dtype, x, pro, w, conv, seeds):
    """Gradients of sum(y*gy) + sum(mean*gm) + sum(var*gv) for conv_bn_stats run by fn in `dtype`."""
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [x.to(dtype).contiguous(memory_format=CL).requires_grad_(), *(v.to(sdt).requires_grad_() for v in pro),
              w.to(dtype).contiguous(memory_format=CL).requires_grad_()]
    y, mean, var = fn(leaves[0], *leaves[1:4], True, leaves[4], *conv, 1)
    gy, gm, gv = seeds
    loss = (y.double() * gy).sum() + (mean.double() * gm).sum() + (var.double() * gv).sum()
    return torch.autograd.grad(loss, leaves)


def _check(shape, dtype, run):
    x, pro, wt, conv, seeds = _case(shape, x_device(run))
    want = _grads(ref.conv_bn_stats, torch.float64, x, pro, wt, conv, seeds)
    eager = _grads(ref.conv_bn_stats, dtype, x, pro, wt, conv, seeds)
    got = run(lambda: _grads(ops.conv_bn_stats, dtype, x, pro, wt, conv, seeds))
    for name, g, e, wn in zip(NAMES, got, eager, want):
        assert g.dtype == e.dtype, name
        assert_close_to_ref(f"d {name}", g, e, wn, dtype=dtype)


def x_device(run):
    return getattr(run, "device", "cpu")


def _forced(device="cpu"):
    def run(fn):
        with resnet_fast.use_engine(BWD, NAME):
            return fn()
    run.device = device
    return run


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (2, 6, 7, 6, 9, 3, 2, 1)),
                                         (torch.float16, (2, 6, 7, 6, 9, 3, 1, 1)),
                                         (torch.float16, (2, 7, 5, 5, 17, 1, 1, 0))])
def test_forced_engine_matches_the_reference(dtype, shape, on_cpu, force_backend):
    force_backend("triton", "cpu")
    _check(shape, dtype, _forced())
    assert on_cpu == [dtype]  # the engine ran, its Triton wgrad once


def test_table_entry_routes_to_the_engine(on_cpu, force_backend):
    force_backend("triton", "cpu")
    key = tables.key(torch.float32, "bwd", 5, 6, 6, 7, 3, 3, [1, 1], [1, 1], [1, 1], 1, True, True)
    entry = {"engine": NAME, "n": 2, "ms": {NAME: 1.0, "aten+triton": 2.0},
             "check": {"against": "test", "passed": True}}

    def run(fn):
        with tables.installed("cpu", {key: entry}):
            return fn()
    _check((2, 5, 6, 6, 7, 3, 1, 1), torch.float32, run)
    assert on_cpu == [torch.float32]
    with tables.installed("cpu", {key: entry}):  # 4 input channels: no entry, the composite
        _grads(ops.conv_bn_stats, torch.float32, *_case((2, 4, 6, 6, 7, 3, 1, 1)))
    assert on_cpu == [torch.float32]


def _backward_args(dtype, prologue=True, groups=1):
    x, pro, wt, conv, (gy, gm, gv) = _case((2, 8, 5, 5, 6, 3, 2, 1))
    y, mean, _ = ref.conv_bn_stats(x, *pro, True, wt, *conv, 1)
    lo = lambda t: t.to(dtype).contiguous(memory_format=CL)  # noqa: E731
    pro = [v.float() for v in pro] if prologue else [None, None, None]
    return [lo(gy), gm.float(), gv.float(), lo(x), *pro, True, lo(wt), lo(y), mean.float(), *conv, groups, [True] * 5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prologue", [True, False])
def test_graph_bindings_in_both_half_dtypes(dtype, prologue, monkeypatch):
    """cuDNN's executor dtypes for the dgrad graphs (float16 and bfloat16): the graph the engine binds, NHWC, in
    the activations' dtype; dY formed once (the chain-rule pass) and read by both the wgrad and the graph."""
    wgrads = []
    monkeypatch.setattr(closed_wgrad, "closed_wgrad",
                        lambda x, dy, w, *a, **k: wgrads.append(dy) or torch.zeros_like(w))
    rec = Recording(lambda *a: None)
    with engine.use_executor(rec):
        out = closed_wgrad.conv_bn_stats_backward(engine.primitives("reference"), *_backward_args(dtype, prologue))
    ((unit, tensors),) = rec.calls
    assert unit.pattern == ("dgrad_dbn" if prologue else "dgrad") and unit.dtype == dtype and unit.stride == (2, 2)
    check_bindings(unit, tensors)
    assert unit.vectors == (torch.float32 if prologue else None)  # the mask as the float32 forward computed it
    assert tensors["dy"] is wgrads[0] and tensors["dy"].dtype == dtype and tensors["dx"].dtype == dtype
    assert [t.numel() > 0 for t in out] == [True, prologue, prologue, prologue, True]


def test_unservable_calls_go_to_the_fallback():
    calls = []
    fallback = lambda P, *args: calls.append(args) or "fallback"  # noqa: E731
    P = engine.primitives("reference")
    with engine.using_fallback({BWD: fallback}):
        with engine.use_executor(Recording(lambda *a: None, supports=lambda unit: False)):
            assert closed_wgrad.conv_bn_stats_backward(P, *_backward_args(torch.bfloat16)) == "fallback"  # no engine
        with engine.use_executor(Recording(lambda *a: None)):
            assert closed_wgrad.conv_bn_stats_backward(P, *_backward_args(torch.float32)) == "fallback"  # dtype
            args = _backward_args(torch.float16)
            args[7] = False  # a prologue without ReLU
            assert closed_wgrad.conv_bn_stats_backward(P, *args) == "fallback"
    assert len(calls) == 3 and engine.FALLBACK[BWD] is not fallback


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_engine_matches_the_reference(dtype, force_backend):
    force_backend("triton", "cuda")
    _check((8, 64, 14, 14, 64, 3, 1, 1), dtype, _forced("cuda"))
