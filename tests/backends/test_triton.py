"""The Triton backend's kernels beyond what tests/ops/test_ops.py's per-backend tests reach: the implicit-GEMM conv
in float16 as well as float32, with both of its epilogues, both conv strategies (Triton GEMM and aten +
Triton BN kernels), statistics spanning many tiles, and the tuning cache.

On CPU these run under TRITON_INTERPRET=1 (tests/conftest.py), on tiny odd shapes; on a GPU the same
bodies run compiled. bfloat16 is GPU-only: the interpreter's bf16 tl.dot is wrong (docs/ARCHITECTURE.md)."""

import json

import pytest
import torch

from resnet_fast import ops
from resnet_fast import reference as ref
from helpers import CL, CONVS, act, assert_close_to_ref, conv_args, force_backend, vec


@pytest.fixture(autouse=True)
def backend(device):
    """Every test here runs on the Triton backend."""
    with force_backend("triton", device):
        yield "triton"


@pytest.fixture(params=["triton", "aten"])
def strategy(request, monkeypatch):
    monkeypatch.setenv("RESNET_FAST_CONV", request.param)
    return request.param


def _dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def _to(ts, dtype):
    return [t.to(dtype) if t is not None and t.is_floating_point() and t.dim() == 4 else t for t in ts]


# A case with more output rows than one merge block covers (tiles * BLOCK_T), one with Cout above BLOCK_N.
BIG = [(2, 6, 23, 17, 5, 3, 1, 1, 1, 1), (1, 20, 6, 5, 40, 1, 1, 0, 1, 1)]


@pytest.mark.parametrize("case", [CONVS[0], CONVS[2], CONVS[3], *BIG])
@pytest.mark.parametrize("prologue", [False, True])
def test_conv_bn_stats_dtypes(case, prologue, strategy, device):
    for dtype in _dtypes(device):
        x, pro, w, s, p, d, g = conv_args(case, device, torch.float32, CL, prologue)
        x, w = x.to(dtype), w.to(dtype)
        y, mean, var = ops.conv_bn_stats(x, *pro, True, w, s, p, d, g)
        y_e, mean_e, var_e = ref.conv_bn_stats(x, *pro, True, w, s, p, d, g)
        f64 = [None if t is None else t.double() for t in pro]
        y64, mean64, var64 = ref.conv_bn_stats(x.double(), *f64, True, w.double(), s, p, d, g)
        assert y.dtype == dtype and mean.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
        for name, a, b, c in (("y", y, y_e, y64), ("mean", mean, mean_e, mean64), ("var", var, var_e, var64)):
            assert_close_to_ref(f"{dtype} {name}", a, b, c, dtype=dtype)


@pytest.mark.parametrize("case", [CONVS[0], CONVS[2], CONVS[4], BIG[1]])
@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (False, False)])
def test_conv_bias_act_dtypes(case, residual, relu, strategy, device):
    for dtype in _dtypes(device):
        x, _, w, s, p, d, g = conv_args(case, device, dtype, CL, False)
        b = torch.randn(w.shape[0], device=device, dtype=dtype)
        shape = ref.conv(x, w, None, s, p, d, g).shape
        r = act(shape, device, dtype, CL) if residual else None
        out = ops.conv_bias_act(x, w, b, r, relu, s, p, d, g)
        out_e = ref.conv_bias_act(x, w, b, r, relu, s, p, d, g)
        out64 = ref.conv_bias_act(*_to([x, w], torch.float64), b.double(), None if r is None else r.double(), relu,
                                  s, p, d, g)
        assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
        assert_close_to_ref(f"{dtype} out", out, out_e, out64, dtype=dtype)


@pytest.mark.parametrize("case", [CONVS[1], CONVS[2]])
def test_conv_bn_stats_backward_dtypes(case, strategy, device):
    """The whole training unit: prologue forward and backward kernels, the statistics chain-rule
    pass, aten dgrad/wgrad; gradients of x, the prologue's mean/scale/bias and W."""
    for dtype in _dtypes(device):
        x, pro, w, s, p, d, g = conv_args(case, device, torch.float32, CL, True)
        leaves = [t.requires_grad_(True) for t in (x.to(dtype), *pro, w.to(dtype))]

        def run(fn, ts):
            y, mean, var = fn(ts[0], *ts[1:4], True, ts[4], s, p, d, g)
            gy = torch.linspace(-1, 1, y.numel(), device=device, dtype=torch.float64).view(y.shape).to(y.dtype)
            loss = (y.to(mean.dtype) * gy.to(mean.dtype)).sum() + (mean * mean.new_tensor(0.3)).sum() + var.sum()
            return torch.autograd.grad(loss, ts)

        fused = run(ops.conv_bn_stats, leaves)
        eager = run(ref.conv_bn_stats, leaves)
        ref64 = run(ref.conv_bn_stats, [t.detach().double().requires_grad_(True) for t in leaves])
        for name, a, b, c in zip(["x", "in_mean", "in_scale", "in_bias", "weight"], fused, eager, ref64):
            assert_close_to_ref(f"{dtype} grad {name}", a, b, c, dtype=dtype)


def test_statistics_large_mean_many_tiles(device):
    """|mean| = 1e3 * std over ~7k rows (hundreds of partial tiles): Chan partials keep the variance."""
    y = act((4, 6, 41, 43), device, fmt=CL) * 0.5 + 1e3
    eye = torch.eye(6, device=device).view(6, 6, 1, 1).contiguous(memory_format=CL)
    _, mean, var = ops.conv_bn_stats(y, None, None, None, False, eye, [1, 1], [0, 0], [1, 1], 1)
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-3, atol=0)


def test_bn_act_float16_dual(device):
    shape = (3, 10, 7, 5)
    x, res = act(shape, device, torch.float16, CL, 1.0), act(shape, device, torch.float16, CL, -1.0)
    vs = [vec(10, device, torch.float32, lo, hi) for lo, hi in ((0.5, 1.5), (0.5, 1.5), (-0.5, 0.5),
                                                                (-1.5, -0.5), (0.5, 1.5), (-0.5, 0.5))]
    out = ops.bn_act(x, *vs[:3], res, *vs[3:], True)
    out_e = ref.bn_act(x, *vs[:3], res, *vs[3:], relu=True)
    out64 = ref.bn_act(x.double(), *[v.double() for v in vs[:3]], res.double(), *[v.double() for v in vs[3:]],
                       relu=True)
    assert_close_to_ref("out", out, out_e, out64, dtype=torch.float16)


def test_tuning_cache_and_switch(tmp_path, monkeypatch):
    from resnet_fast.backends.triton import tuning

    cfg = tuning.Config(64, 32, 16, 4, 3)
    assert tuning._parse(cfg.name()) == cfg and tuning._parse(tuning.ATEN) == tuning.ATEN
    monkeypatch.setenv("RESNET_FAST_TUNING_CACHE", str(tmp_path / "sub" / "t.json"))
    monkeypatch.setattr(tuning, "_memory", {"k": cfg.name()})
    tuning._save()
    assert json.loads((tmp_path / "sub" / "t.json").read_text()) == {"k": cfg.name()}
    monkeypatch.setattr(tuning, "_memory", {})
    monkeypatch.setattr(tuning, "_loaded_from", None)
    tuning._load()
    assert tuning._memory == {"k": cfg.name()}
    monkeypatch.setenv("RESNET_FAST_CONV", "cudnn")
    with pytest.raises(ValueError, match="RESNET_FAST_CONV"):
        tuning.choose("k", torch.device("cpu"), 8, 8, 64, torch.float32, lambda c: None)
    for cin_g, cout_g in ((3, 64), (4, 4), (256, 512)):
        assert all(c.block_n >= 16 and c.block_k >= 16 for c in tuning.candidates(cin_g, cout_g))


def test_tuning_measures_once_keeps_the_fastest_and_replays(tmp_path, monkeypatch):
    """choose() on a (simulated) GPU: times every candidate once, keeps the fastest, writes it to the
    cache file, and afterwards (also while a CUDA graph is captured) replays it without measuring."""
    from resnet_fast.backends.triton import tuning

    monkeypatch.setenv("RESNET_FAST_TUNING_CACHE", str(tmp_path / "t.json"))
    monkeypatch.delenv("RESNET_FAST_CONV", raising=False)
    monkeypatch.setattr(tuning, "_memory", {})
    monkeypatch.setattr(tuning, "_loaded_from", None)
    monkeypatch.setattr(tuning, "_device_key", lambda device: "GPU|torch|triton")
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    cands = tuning.candidates(64, 64)
    fastest = cands[len(cands) // 2]
    wrong = cands[0]  # the quickest, but its output disagrees with aten's: never chosen
    timed = []

    def fake_time(run):
        choice = run()
        timed.append(choice)
        return (0.5 if choice == wrong else 1.0 if choice == fastest else 2.0), torch.full((3,), float(choice == wrong))

    monkeypatch.setattr(tuning, "_time", fake_time)
    cuda = torch.device("cuda")
    run = lambda choice: choice  # noqa: E731
    assert tuning.choose("shape1", cuda, 64, 64, 4096, torch.float16, run) == fastest
    assert set(timed) == {tuning.ATEN, *cands}
    assert json.loads((tmp_path / "t.json").read_text()) == {"GPU|torch|triton|shape1": fastest.name()}
    timed.clear()
    capturing[0] = True
    assert tuning.choose("shape1", cuda, 64, 64, 4096, torch.float16, run) == fastest
    assert tuning.choose("shape2", cuda, 64, 64, 4096, torch.float16, run) == tuning.default_config(64, 64, 4096)
    capturing[0] = False
    monkeypatch.setattr(tuning, "_memory", {})
    monkeypatch.setattr(tuning, "_loaded_from", None)  # a new process: the file answers
    assert tuning.choose("shape1", cuda, 64, 64, 4096, torch.float16, run) == fastest
    assert timed == [] and tuning.choose("s", cuda, 64, 64, 64, torch.float64, run) == tuning.ATEN
