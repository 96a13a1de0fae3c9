"""optimize_for_inference: the same result as the eval model (float32) and within 2x eager's error
(bfloat16), refolding after every kind of source change, new input shapes, bad input, CUDA graphs."""

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import resnet_fast
from resnet_fast.backends import onednn_graph
from helpers import assert_close_to_ref, gpu_only


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their defaults, so folding is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def make(arch="resnet10", device="cpu", **kwargs):
    """A torchvision model; "resnet10" is ResNet(BasicBlock, [1, 1, 1, 1]), a quick stand-in with every
    kind of block (identity and projection shortcuts)."""
    if arch == "resnet10":
        model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10, **kwargs)
    else:
        model = getattr(torchvision.models, arch)(num_classes=10, **kwargs)
    return _randomize_norms(model).eval().to(device)


def eval_output(tv_model, x):
    with torch.no_grad():
        return resnet_fast.from_torchvision(tv_model).eval()(x)


def assert_same(a, b, device):
    """Same folded weights, same ops: equal up to the GPU's choice of conv algorithm (cuDNN may pick
    different ones for the two calls; fp32 runs with TF32 off in the tests, tests/conftest.py)."""
    tol = 1e-5 if device == "cpu" else 1e-3
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def assert_2x_eager(name, out, tv_model, x, dtype):
    """out against torchvision eval in float64, at most 2x torchvision's own error in `dtype` (+ atol)."""
    with torch.no_grad():
        ref = copy.deepcopy(tv_model).double()(x.double())
        eager = copy.deepcopy(tv_model).to(dtype)(x.to(dtype))
    assert_close_to_ref(name, out, eager, ref, dtype=dtype)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_float32_matches_eval_model(arch, device):
    tv = make(arch, device)
    fast = resnet_fast.optimize_for_inference(tv)
    per_conv = resnet_fast.optimize_for_inference(tv, onednn_graph=False)
    x = torch.randn(2, 3, 48, 48, device=device)
    expected = eval_output(tv, x)
    for model in (fast, per_conv):
        out = model(x)
        assert out.dtype == torch.float32 and out.shape == (2, 10)
        assert_same(out, expected, device)
        assert_2x_eager("logits", out, tv, x, torch.float32)
    assert not tv.training  # the source model is left as it was
    # CPU float32 on the native backend: the trunk compiled by oneDNN Graph for this shape; per conv,
    # folded weights prepacked once into oneDNN's layout.
    native_cpu = device == "cpu" and resnet_fast.backend_info()["cpu"]["conv_bias_act"] == "native"
    graph = native_cpu and onednn_graph.available(torch.device(device), torch.float32)
    assert fast.graph_shapes == ([(2, 3, 48, 48)] if graph else [])
    assert per_conv.stem.prepack == native_cpu and not per_conv.onednn_graph and not per_conv.graph_shapes
    assert (per_conv.stem._packed is not None and per_conv.stem._packed.layout == torch._mkldnn) == native_cpu


def test_bfloat16_against_float64(device):
    tv = make("resnet10", device)
    fast = resnet_fast.optimize_for_inference(tv, dtype=torch.bfloat16)
    w = fast.stem.weight
    assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 40, 40, device=device)
    out = fast(x)  # float32 input, converted once
    assert out.dtype == torch.bfloat16
    assert_2x_eager("bfloat16 logits", out, tv, x, torch.bfloat16)


def test_frozen_batchnorm_and_torchvision_input():
    tv = make("resnet10", norm_layer=FrozenBatchNorm2d)
    fast = resnet_fast.optimize_for_inference(tv)
    x = torch.randn(2, 3, 32, 32)
    assert_2x_eager("FrozenBatchNorm2d logits", fast(x), tv, x, torch.float32)


def test_new_shapes_and_graph_cache_bound(device):
    tv = make("resnet10", device)
    fast = resnet_fast.optimize_for_inference(tv, max_graphs=2)
    shapes = [(2, 3, 32, 32), (3, 3, 32, 32), (2, 3, 40, 40), (2, 3, 32, 32), (0, 3, 32, 32)]
    for shape in shapes:
        x = torch.randn(shape, device=device)
        assert_same(fast(x), eval_output(tv, x), device)
    x = torch.randn(2, 3, 32, 32, device=device, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert_same(fast(x), eval_output(tv, x.float()), device)
    # CUDA graphs (or CPU oneDNN Graph trunks) for the first two shapes only, the third ran eagerly.
    graphs = device == "cuda" or fast.onednn_graph
    assert fast.graph_shapes == ([(2, 3, 32, 32), (3, 3, 32, 32)] if graphs else [])


def test_refolds_after_source_changes(device):
    tv = make("resnet10", device)
    fast = resnet_fast.optimize_for_inference(tv)
    snapshot = resnet_fast.optimize_for_inference(tv, track_updates=False)
    x = torch.randn(2, 3, 32, 32, device=device)
    before = fast(x)
    torch.testing.assert_close(snapshot(x), before)
    # A training step: running statistics move (forward) and every parameter moves (SGD).
    tv.train()
    torch.nn.functional.cross_entropy(tv(torch.randn(4, 3, 32, 32, device=device)),
                                      torch.tensor([0, 1, 2, 3], device=device)).backward()
    torch.optim.SGD(tv.parameters(), lr=0.5).step()
    tv.eval()
    after = eval_output(tv, x)
    assert (after - before).abs().max() > 1e-2
    assert_same(fast(x), after, device)
    torch.testing.assert_close(snapshot(x), before)  # a snapshot until refresh()
    # load_state_dict copies in place (version counters move).
    other = make("resnet10", device)
    tv.load_state_dict(other.state_dict())
    assert_same(fast(x), eval_output(other, x), device)
    # An edit through .data bypasses version counters: refresh() picks it up.
    tv.fc.bias.data.add_(1.0)
    snapshot.refresh()
    fast.refresh()
    for m in (fast, snapshot):
        assert_same(m(x), eval_output(tv, x), device)



@pytest.mark.skipif(not onednn_graph.available(torch.device("cpu"), torch.float32),
                    reason="this torch has no TorchScript oneDNN Graph fuser")
def test_onednn_graph_trunk_per_shape_dropped_on_refold():
    """CPU float32: one compiled trunk per input shape; the process-wide fuser switch is restored; a
    refold (here a running-statistics change) drops the trunk, whose frozen constants are the old weights."""
    tv = make("resnet10")
    fast = resnet_fast.optimize_for_inference(tv)
    x = torch.randn(2, 3, 32, 32)
    switch = torch.jit.onednn_fusion_enabled()
    assert_same(fast(x), eval_output(tv, x), "cpu")
    assert torch.jit.onednn_fusion_enabled() == switch
    first = fast._cpu_graphs[(2, 3, 32, 32)]
    assert first is not None and fast.graph_shapes == [(2, 3, 32, 32)]
    assert_same(fast(x), eval_output(tv, x), "cpu")  # replayed, same numbers
    assert fast._cpu_graphs[(2, 3, 32, 32)] is first
    with torch.no_grad():
        tv.layer1[0].bn1.running_var.mul_(4.0)
    assert_same(fast(x), eval_output(tv, x), "cpu")
    assert fast._cpu_graphs[(2, 3, 32, 32)] is not first
    # fc alone changing keeps the trunk (fc runs after it)
    second = fast._cpu_graphs[(2, 3, 32, 32)]
    with torch.no_grad():
        tv.fc.weight.mul_(2.0)
    assert_same(fast(x), eval_output(tv, x), "cpu")
    assert fast._cpu_graphs[(2, 3, 32, 32)] is second


def test_groups_and_dilation_both_cpu_paths():
    """Grouped and dilated convs (ResNeXt-style, replace_stride_with_dilation) on the default path (on CPU
    float32 the oneDNN Graph trunk) and the per-conv path, against float64."""
    tv = _randomize_norms(torchvision.models.ResNet(
        torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10,
        replace_stride_with_dilation=[False, True, True])).eval()
    x = torch.randn(2, 3, 40, 40)
    for model in (resnet_fast.optimize_for_inference(tv), resnet_fast.optimize_for_inference(tv, onednn_graph=False)):
        assert_2x_eager("grouped / dilated logits", model(x), tv, x, torch.float32)

def test_bad_input_and_unsupported_models():
    fast = resnet_fast.optimize_for_inference(make("resnet10"))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 4, 32, 32\)"):
        fast(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        fast(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating point.*uint8"):
        fast(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fast([[1.0]])
    with pytest.raises(RuntimeError, match="input is on meta"):
        fast(torch.randn(2, 3, 32, 32, device="meta"))
    with pytest.raises(RuntimeError, match="optimize_for_inference again"):
        fast.to(torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        resnet_fast.optimize_for_inference(make("resnet10"), dtype=torch.int32)
    with pytest.raises(TypeError, match="ResNet"):
        resnet_fast.optimize_for_inference(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="GroupNorm"):
        resnet_fast.optimize_for_inference(make("resnet10", norm_layer=lambda c: nn.GroupNorm(2, c)))
    with pytest.raises(ValueError, match="running statistics"):
        resnet_fast.optimize_for_inference(
            make("resnet10", norm_layer=functools.partial(nn.BatchNorm2d, track_running_stats=False)))


def test_custom_head_runs_as_is():
    tv = make("resnet10")
    tv.fc = nn.Sequential(nn.Linear(512, 7), nn.Tanh())
    fast = resnet_fast.optimize_for_inference(tv)
    x = torch.randn(2, 3, 32, 32)
    assert_same(fast(x), eval_output(tv, x), "cpu")
    assert not list(fast.parameters()) and not fast.state_dict()  # the source model owns every tensor


VARIANTS = {
    "resnet18-A": lambda: resnet_fast.resnet18(num_classes=10, shortcut="A"),
    "resnet18-C": lambda: resnet_fast.resnet18(num_classes=10, shortcut="C"),
    "resnet18-plain": lambda: resnet_fast.resnet18(num_classes=10, residual=False),
    "cifar-resnet20-A-syncbn": lambda: resnet_fast.convert_sync_batchnorm(resnet_fast.resnet20(shortcut="A")),
    "cifar-plain20": lambda: resnet_fast.plain20(),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_variants_match_eval_model(variant):
    """Zero-padded identity (A) and projection-everywhere (C) shortcuts, plain nets, the CIFAR stem."""
    model = _randomize_norms(VARIANTS[variant]()).eval()
    fast = resnet_fast.optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert_same(fast(x), expected, "cpu")


@gpu_only
def test_cuda_graph_replay_and_refold():
    tv = make("resnet50", "cuda")
    fast = resnet_fast.optimize_for_inference(tv, dtype=torch.bfloat16)
    eager = resnet_fast.optimize_for_inference(tv, dtype=torch.bfloat16, cuda_graph=False)
    x1, x2 = (torch.randn(4, 3, 64, 64, device="cuda") for _ in range(2))
    o1 = fast(x1)
    kept = o1.clone()
    o2 = fast(x2)
    assert fast.graph_shapes == [(4, 3, 64, 64)]
    assert torch.equal(o1, kept)  # a fresh output per call, not the graph's static buffer
    torch.testing.assert_close(o2, eager(x2), rtol=2e-2, atol=2e-2)
    assert_2x_eager("graph logits", o2, tv, x2, torch.bfloat16)
    with torch.no_grad():  # in-place changes: refolded into the buffers the graph reads
        tv.layer2[0].bn2.running_var.mul_(3.0)
        tv.fc.weight.mul_(2.0)
    o3 = fast(x2)
    assert fast.graph_shapes == [(4, 3, 64, 64)]
    torch.testing.assert_close(o3, eager(x2), rtol=2e-2, atol=2e-2)
    assert (o3.float() - o2.float()).abs().max() > 0.1 * o2.float().abs().max()
    tv.cpu()
    with pytest.raises(RuntimeError, match="optimize_for_inference again"):
        fast(x2)
