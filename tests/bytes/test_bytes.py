"""benchmarks/bytes.py: the recording mode counts what each launch reads and writes, the Triton pointer
table covers every kernel argument, every engine runs a (tiny) training step on meta tensors, and the
cuDNN engine builds only graphs that the deviceless check covers."""

import importlib.util
import inspect
import os
import sys

import pytest
import torch

_BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(_BENCH))
_spec = importlib.util.spec_from_file_location("bytes_accounting", os.path.join(_BENCH, "bytes.py"))
bytes_accounting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bytes_accounting)
import bytes_record  # noqa: E402

from resnet_fast.backends.cudnn import deviceless, engine  # noqa: E402
from resnet_fast.backends.cudnn.execute import Recording  # noqa: E402


def test_aten_ops_count_inputs_and_outputs_once_and_skip_views():
    rec = bytes_record.Recorder()
    with torch.device("meta"):
        x = torch.empty(4, 8, 5, 5, dtype=torch.float16)
        w = torch.empty(6, 8, 3, 3, dtype=torch.float16)
    with rec:
        y = torch.relu(x)
        y.view(-1).t() if y.dim() == 2 else y.view(-1)
        torch.add(y, y)  # one operand passed twice is one read
        torch.nn.functional.conv2d(x, w)
    names = [lc.name for lc in rec.launches]
    assert names == ["aten.relu", "aten.add", "aten.convolution"], names
    relu, add, conv = rec.launches
    assert (relu.read, relu.written, relu.kind) == (x.numel() * 2, x.numel() * 2, "memory")
    assert (add.read, add.written) == (x.numel() * 2, x.numel() * 2)
    assert conv.kind == "conv" and conv.read == (x.numel() + w.numel()) * 2 and conv.written == 4 * 6 * 3 * 3 * 2


def test_triton_pointer_table_covers_every_kernel_argument():
    mods = bytes_accounting._kernel_modules()
    kernels = {n: getattr(m, n) for m in mods for n in dir(m) if n.endswith("_kernel") and hasattr(getattr(m, n), "fn")}
    assert set(kernels) == set(bytes_record.TRITON_POINTERS), "a Triton kernel was added or renamed"
    for name, k in kernels.items():
        params = inspect.signature(k.fn).parameters
        flags = {p: 1 for p in params}  # every flag on: every pointer the table knows must exist
        if "RES_MODE" in params:
            flags["RES_MODE"] = 2
        variants = [flags] + ([{**flags, "STATS": 0}] if "STATS" in params else [])  # the conv's other epilogue
        # a flag the table reads that the kernel no longer has raises KeyError here
        touched = [p for v in variants for side in bytes_record.TRITON_POINTERS[name](v) for p in side]
        pointers = {p for p in params if p.endswith("_ptr")}
        assert set(touched) == pointers, name


def test_triton_stand_in_logs_only_the_operands_the_flags_touch():
    from resnet_fast.backends.triton import launch

    rec = bytes_record.Recorder()
    with torch.device("meta"):
        x = torch.empty(2, 16, 4, 4, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        vec = torch.empty(16)
    with bytes_record.recording_triton(rec, *bytes_accounting._kernel_modules()), rec:
        launch.bn_act(x, vec, vec, vec, None, None, None, None, True)
        launch.bn_act(x, vec, vec, vec, x.clone(), None, None, None, True)
    plain, with_res = [lc for lc in rec.launches if lc.name == "_bn_act_fwd_kernel"]
    assert plain.written == with_res.written == x.numel() * 2
    assert with_res.read - plain.read == x.numel() * 2  # the residual, one more activation read


@pytest.fixture(scope="module")
def tiny_results():
    return bytes_accounting.run(batch=2, image=32, dtypes=[torch.float16, torch.bfloat16], arch="resnet18")


def test_every_engine_runs_a_step_and_fused_engines_skip_eager_passes(tiny_results):
    assert {name for _, name in tiny_results} == {"eager", "triton-gemm", "aten+triton", "cudnn-fused",
                                                  "triton-closed", "cudnn+closed", "closed-wgrad+cudnn-dgrad"}
    for (dtype, name), launches in tiny_results.items():
        ops = {lc.name for lc in launches}
        s = bytes_accounting.summarize(launches)
        assert s["conv"] > 0 and s["memory"] > 0, name
        if name == "eager":
            assert {"aten.native_batch_norm", "aten.relu_", "aten.native_batch_norm_backward"} <= ops
        else:
            assert not ops & {"aten.native_batch_norm", "aten.relu_", "aten.native_batch_norm_backward"}, name
        if name == "triton-gemm":
            assert "aten.convolution" not in ops and "_conv_fwd_kernel" in ops
        if name in ("triton-closed", "cudnn+closed"):  # conv backward only in the fused Triton kernels, no chain pass
            assert "aten.convolution_backward" not in ops and {"_wgrad_kernel", "_dgrad_kernel"} <= ops
            assert not [lc for lc in launches if lc.op == "conv_bn_stats_backward" and lc.kind == "memory"
                        and lc.name.startswith("_bn_act")]
        if name == "closed-wgrad+cudnn-dgrad":  # Triton wgrad, cuDNN dgrad graph, one chain-rule pass per unit
            assert "aten.convolution_backward" not in ops and "_dgrad_kernel" not in ops
            assert {"_wgrad_kernel", "cudnn.dgrad_dbn+sbr", "cudnn.dgrad"} <= ops
            assert not [lc for lc in launches if lc.op == "conv_bn_stats_backward" and lc.kind == "memory"
                        and lc.name == "_bn_act_bwd_kernel"]  # dReLU and the dBN sums are in the graph
        if name == "cudnn-fused":  # the stem's fprop has no cuDNN engine: Triton serves it
            stem_forward = [lc for lc in launches if lc.name == "aten.convolution"]
            assert len(stem_forward) == 1 and {"cudnn.fprop+sbr", "cudnn.wgrad+sbr", "cudnn.dgrad_dbn+sbr"} <= ops
            # the previous BN's backward (dReLU, dBN sums, dx = g*scale) is in the dgrad epilogue: no pass for it
            assert not [lc for lc in launches if lc.op == "conv_bn_stats_backward" and lc.kind == "memory"
                        and lc.name == "_bn_act_bwd_kernel"]


def test_markdown_and_csv(tiny_results, tmp_path):
    text = bytes_accounting.markdown(tiny_results, 2, 32, "resnet18")
    assert "| float16 | cudnn-fused |" in text and "## bfloat16, triton-closed" in text
    bytes_accounting.main(["--arch", "resnet18", "--batch", "2", "--image", "32", "--dtype", "float16",
                           "--markdown", str(tmp_path / "b.md"), "--launches", str(tmp_path / "b.csv")])
    rows = (tmp_path / "b.csv").read_text().splitlines()
    assert rows[0].startswith("dtype,engine,index") and len(rows) > 100


def test_cudnn_engine_builds_only_deviceless_checked_graphs():
    """The graphs the engine executes in a resnet50 step at batch 256 are among those the deviceless test
    check_supports (test_deviceless.py), so that test covers the very graphs the engine builds."""
    rec = bytes_record.Recorder(bytes_accounting._table(engine.bound(engine.primitives("triton"))))
    recording = Recording(rec.log)
    with torch.device("meta"):
        import resnet_fast

        model = resnet_fast.resnet50().to(dtype=torch.float16, memory_format=torch.channels_last)
        x = torch.empty(256, 3, 224, 224, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    with bytes_record.recording_triton(rec, *bytes_accounting._kernel_modules()), engine.use_executor(recording), \
            rec:
        model(x).sum().backward()
    built = {unit for unit, _ in recording.calls}
    checked = set(deviceless.resnet_unit_graphs("resnet50", 256, torch.float16))
    assert built and built <= checked, sorted(g.key() for g in built - checked)
    # all but the stem's fprop (no cuDNN engine: the fallback serves it) and its dgrad (the image needs no grad)
    assert {(g.pattern, g.c) for g in checked - built if g.vectors is None} == {("fprop", 3), ("dgrad", 3)}


def test_closed_wgrad_engine_builds_only_deviceless_checked_graphs():
    """The same for closed-wgrad+cudnn-dgrad in bfloat16: its dgrad graphs (float32 scale / bias in dgrad_dbn)
    are all among those test_deviceless.py check_supports."""
    import resnet_fast

    name = "closed-wgrad+cudnn-dgrad"
    rec = bytes_record.Recorder(bytes_accounting._table({}))
    recording = Recording(rec.log)
    with torch.device("meta"):
        model = resnet_fast.resnet50().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        x = torch.empty(256, 3, 224, 224, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with bytes_record.recording_triton(rec, *bytes_accounting._kernel_modules()), engine.use_executor(recording), \
            resnet_fast.use_engine("conv_bn_stats_backward", name), rec:
        model(x).sum().backward()
    built = {unit for unit, _ in recording.calls}
    checked = set(deviceless.resnet_unit_graphs("resnet50", 256, torch.bfloat16))
    assert built and built <= checked, sorted(g.key() for g in built - checked)
    assert {g.pattern for g in built} == {"dgrad", "dgrad_dbn"}
    assert all(g.vectors == torch.float32 for g in built if g.pattern == "dgrad_dbn")
