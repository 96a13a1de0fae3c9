"""The cuDNN engine's math and wiring on CPU: its graphs run by TorchExecutor (each graph's math in torch,
reading and writing exactly the bound tensors) and its memory-bound passes on the plain-PyTorch
primitives (the Triton ones are tested in tests/backends/), compared with
the plain-PyTorch reference ops; CudnnExecutor's cache, workspace and stream with stand-in builders.
The real cuDNN execution is GPU-only and unverified (no GPU has run it)."""

import pytest
import torch

from resnet_fast import composites
from resnet_fast import reference as ref
from resnet_fast.backends.cudnn import engine
from resnet_fast.backends.cudnn.execute import CudnnExecutor, Recording, TorchExecutor, check_bindings
from resnet_fast.backends.cudnn.graphs import UnitGraph

CL = torch.channels_last
P = engine.primitives("reference")  # plain-PyTorch primitives for the memory-bound passes (fast on CPU)
# (N, C, H, W, K, R, stride, padding): 3x3 pad 1, strided 3x3, 1x1, strided 1x1 (a projection)
SHAPES = [(2, 5, 7, 6, 4, 3, 1, 1), (3, 8, 9, 8, 6, 3, 2, 1), (2, 6, 5, 5, 7, 1, 1, 0), (2, 4, 7, 7, 8, 1, 2, 0)]


def _inputs(shape, dtype, prologue):
    n, c, h, w, k, r, s, p = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
    wt = (torch.randn(k, c, r, r, dtype=torch.float64) / (c * r * r) ** 0.5).to(dtype).contiguous(memory_format=CL)
    vec = lambda: torch.randn(c, dtype=torch.float64).to(ref.stat_dtype(dtype))  # noqa: E731
    pro = (vec(), vec().abs() + 0.5, vec()) if prologue else (None, None, None)
    return x, pro, wt, [s, s], [p, p], [1, 1]


@pytest.mark.parametrize("prologue", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_reference_float64(shape, prologue):
    x, (m, sc, b), wt, stride, padding, dil = _inputs(shape, torch.float64, prologue)
    with engine.use_executor(TorchExecutor()):
        y, mean, var = engine.conv_bn_stats(P, x, m, sc, b, True, wt, stride, padding, dil, 1)
    ry, rmean, rvar = ref.conv_bn_stats(x, m, sc, b, True, wt, stride, padding, dil, 1)
    torch.testing.assert_close(y, ry, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mean, rmean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(var, rvar, rtol=1e-8, atol=1e-10)  # E[y^2] - E[y]^2: see engine.py
    assert y.is_contiguous(memory_format=CL)
    _check_backward(x, m, sc, b, wt, ry, rmean, stride, padding, dil, [True, prologue, prologue, prologue, True])


def _check_backward(x, m, sc, b, wt, y, mean, stride, padding, dil, mask):
    """The engine's backward (TorchExecutor) against the reference's, float64, for random output gradients."""
    gy, gm, gv = torch.randn_like(y), torch.randn_like(mean), torch.randn_like(mean)
    with engine.use_executor(TorchExecutor()):
        got = engine.conv_bn_stats_backward(P, gy, gm, gv, x, m, sc, b, True, wt, y, mean, stride, padding, dil, 1,
                                            mask)
    want = ref.conv_bn_stats_backward(gy, gm, gv, x, m, sc, b, True, wt, y, mean, stride, padding, dil, 1, mask)
    for name, g, w in zip(("dx", "d_in_mean", "d_in_scale", "d_in_bias", "dW"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")


def test_backward_without_a_prologue_mean_matches_reference_float64():
    """in_mean None (a prologue of scale and bias only): the dgrad_dbn graph centres x at 0."""
    x, (_, sc, b), wt, stride, padding, dil = _inputs(SHAPES[1], torch.float64, True)
    y, mean, _ = ref.conv_bn_stats(x, None, sc, b, True, wt, stride, padding, dil, 1)
    _check_backward(x, None, sc, b, wt, y, mean, stride, padding, dil, [True, False, True, True, True])


def test_float16_forward_close_to_reference():
    x, (m, sc, b), wt, stride, padding, dil = _inputs(SHAPES[0], torch.float16, True)
    with engine.use_executor(TorchExecutor()):
        y, mean, var = engine.conv_bn_stats(P, x, m, sc, b, True, wt, stride, padding, dil, 1)
    r64 = ref.conv_bn_stats(*(t.double() if t is not None else None for t in (x, m, sc, b)), True, wt.double(),
                            stride, padding, dil, 1)
    # scale' and bias' are rounded to float16 (the fused engines take them in the io dtype)
    torch.testing.assert_close(y.double(), r64[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mean.double(), r64[1], rtol=2e-2, atol=2e-2)


def test_unservable_calls_go_to_the_fallback():
    calls = []
    x, (m, sc, b), wt, stride, padding, dil = _inputs((2, 9, 7, 6, 4, 3, 1, 1), torch.float16, True)
    few, _, wfew, *_ = _inputs(SHAPES[0], torch.float16, True)  # 5 input channels: no cuDNN fprop engine

    def fallback(prims, *args):
        assert prims is P
        calls.append(args)
        return "fallback"

    with engine.use_executor(Recording(lambda *a: None)), engine.using_fallback({"conv_bn_stats": fallback}):
        assert engine.conv_bn_stats(P, x.float(), m, sc, b, True, wt.float(), stride, padding, dil, 1) == "fallback"
        assert engine.conv_bn_stats(P, x, m, sc, b, False, wt, stride, padding, dil, 1) == "fallback"  # no ReLU
        assert engine.conv_bn_stats(P, few, None, None, None, False, wfew, stride, padding, dil, 1) == "fallback"
        assert engine.conv_bn_stats(P, x, m, sc, b, True, wt, stride, padding, dil, 1) != "fallback"
    assert len(calls) == 3 and engine.FALLBACK["conv_bn_stats"] is composites.conv_bn_stats


def test_bindings_are_nhwc_with_the_graphs_dtypes():
    logged = []
    rec = Recording(lambda name, kind, reads, writes: logged.append((name, kind, len(reads), len(writes))))
    x, (m, sc, b), wt, stride, padding, dil = _inputs(SHAPES[1], torch.float16, True)
    with engine.use_executor(rec):
        y, mean, var = engine.conv_bn_stats(P, x.contiguous(), m, sc, b, True, wt.contiguous(), stride, padding, dil, 1)
        y, mean, var = torch.randn_like(y), torch.randn_like(mean), torch.rand_like(var)  # (outputs never computed)
        engine.conv_bn_stats_backward(P, torch.randn_like(y), mean, var, x, m, sc, b, True, wt, y, mean, stride,
                                      padding, dil, 1, [True, True, True, True, True])
    assert [c[0].pattern for c in rec.calls] == ["fprop", "wgrad", "dgrad_dbn"]
    for unit, tensors in rec.calls:
        check_bindings(unit, tensors)  # raises on any shape / stride / dtype mismatch
        assert tensors["x"].is_contiguous(memory_format=CL) and tensors["scale"].dtype == torch.float16
        assert unit.prologue and unit.stride == (2, 2)
    assert logged == [("cudnn.fprop+sbr", "conv", 4, 3), ("cudnn.wgrad+sbr", "conv", 4, 1),
                      ("cudnn.dgrad_dbn+sbr", "conv", 7, 3)]  # dx and both dBN sums from the dgrad epilogue
    assert rec.calls[2][1]["in_scale"].dtype == rec.calls[2][1]["sum"].dtype == torch.float32
    with pytest.raises(ValueError, match="strides"):
        check_bindings(rec.calls[0][0], {**rec.calls[0][1], "x": x.contiguous()})


def test_cache_keys_tell_every_graph_apart():
    base = UnitGraph("fprop", 2, 4, 5, 5, 8, 3, 3, (1, 1), (1, 1), (1, 1), True, torch.float16)
    variants = [base._replace(**{f: v}) for f, v in (("pattern", "wgrad"), ("n", 3), ("stride", (2, 2)),
                                                      ("prologue", False), ("dtype", torch.bfloat16), ("r", 1),
                                                      ("vectors", torch.float32))]
    assert len({g.key() for g in [base, *variants]}) == 1 + len(variants)


class _FakeGraph:
    def __init__(self):
        self.executions = []

    def execute(self, pack, workspace, handle=None):
        self.executions.append((pack, workspace, handle))


def test_cudnn_executor_builds_once_and_runs_on_the_current_stream_with_a_torch_workspace():
    built, streams = [], []

    def build(unit, handle):
        built.append((unit, handle))
        return _FakeGraph(), {b.name: f"uid:{b.name}" for b in unit.bindings()}, 4096

    ex = CudnnExecutor(build=build, handle_for=lambda dev: "handle", stream_of=lambda dev: 1234,
                       set_stream=lambda h, s: streams.append((h, s)))
    x, (m, sc, b), wt, stride, padding, dil = _inputs(SHAPES[0], torch.float16, True)
    with engine.use_executor(ex):
        for _ in range(2):
            engine.conv_bn_stats(P, x, m, sc, b, True, wt, stride, padding, dil, 1)
    assert len(built) == 1 and ex.builds == 1
    graph = ex.plan(built[0][0], x.device)[0]
    assert len(graph.executions) == 2 and streams == [("handle", 1234)] * 2
    pack, workspace, handle = graph.executions[0]
    assert handle == "handle" and workspace.dtype == torch.uint8 and workspace.numel() == 4096
    assert set(pack) == {f"uid:{n}" for n in ("x", "scale", "bias", "w", "y", "sum", "sqsum")}


def test_plan_cache_round_trip_and_rejects_stale_entries(tmp_path, monkeypatch):
    from resnet_fast.backends.cudnn import plan_cache

    monkeypatch.setenv("RESNET_FAST_CUDNN_CACHE", str(tmp_path))
    key = UnitGraph("fprop", 2, 8, 5, 5, 8, 3, 3, (1, 1), (1, 1), (1, 1), True, torch.float16).key()
    assert plan_cache.load(key, "GPU", 92400) is None
    plan_cache.save(key, "GPU", 92400, b"\x00plan\xff", {"x": 1, "w": 2})
    assert plan_cache.load(key, "GPU", 92400) == (b"\x00plan\xff", {"x": 1, "w": 2})
    assert plan_cache.load(key, "GPU", 92500) is None and plan_cache.load(key, "Other GPU", 92400) is None
    (entry,) = list(tmp_path.iterdir())
    entry.write_text("{not json")
    assert plan_cache.load(key, "GPU", 92400) is None  # unreadable: rebuilt, never trusted
    monkeypatch.setenv("RESNET_FAST_CUDNN_CACHE", "off")
    plan_cache.save(key, "GPU", 92400, b"plan", {})
    assert plan_cache.load(key, "GPU", 92400) is None and len(list(tmp_path.iterdir())) == 1


def test_registry_entry_loads_and_serves_through_the_engine(monkeypatch):
    """REGISTRY_ENTRY passes the registry's checks and its table runs the engine's graphs (recorded), with
    the Triton primitives (interpreted here) for the memory-bound passes."""
    from resnet_fast import backends
    from resnet_fast.backends import cudnn as cudnn_backend

    monkeypatch.setitem(backends.BACKENDS, "cudnn", cudnn_backend.REGISTRY_ENTRY)
    table, _ = backends.load("cudnn")
    x, (m, sc, b), wt, stride, padding, dil = _inputs((2, 8, 5, 5, 8, 3, 1, 1), torch.float16, True)
    rec = Recording(lambda *a: None)
    with engine.use_executor(rec):
        y, mean, var = table["conv_bn_stats"](x, m, sc, b, True, wt, stride, padding, dil, 1)
        y, mean, var = torch.randn_like(y), torch.randn_like(mean), torch.rand_like(var)
        table["conv_bn_stats_backward"](torch.randn_like(y), mean, var, x, m, sc, b, True, wt, y, mean, stride,
                                        padding, dil, 1, [True] * 5)
    assert [u.pattern for u, _ in rec.calls] == ["fprop", "wgrad", "dgrad_dbn"]
