"""torch.fx / feature extraction, TorchScript (trace and script), ONNX (both exporters, run by
onnxruntime) and torch.export, each held to torchvision's model doing the same thing."""

import io

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import resnet_fast


def pair(arch="resnet18", dtype=torch.float32):
    a = getattr(torchvision.models, arch)(num_classes=10)
    b = getattr(resnet_fast, arch)(num_classes=10)
    b.load_state_dict(a.state_dict())
    return a.to(dtype), b.to(dtype)


def small_pair(layers=(1, 1, 1, 1)):
    """One BasicBlock per stage: every stage kind, a quarter of resnet18's tracing time."""
    a = tv.ResNet(tv.BasicBlock, list(layers), num_classes=10)
    b = resnet_fast.ResNet(resnet_fast.BasicBlock, list(layers), num_classes=10)
    b.load_state_dict(a.state_dict())
    return a, b


def close64(actual, expected, what=""):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9 * scale, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------------------ torch.fx

USUAL_NODES = ["relu", "maxpool", "layer1.0", "layer1", "layer2", "layer3", "layer4", "avgpool",
               "flatten", "fc"]


def test_fx_node_names_are_torchvision_module_paths():
    """get_graph_node_names: torchvision's nodes for the stem output ("relu"), maxpool and the head;
    each fused block is one node named by its path (torchvision's graph has the block's inner ops
    there instead), the fused stem one node "relu" fed by its modules (no "conv1" / "bn1" outputs)."""
    a, b = pair()
    tv_train, tv_eval = get_graph_node_names(a)
    fast_train, fast_eval = get_graph_node_names(b)
    assert fast_train == fast_eval
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert fast_eval == ["x", "contiguous", "_conv1_module", "_bn1_module", "_relu_module", "relu", "maxpool",
                         *blocks, "avgpool", "flatten", "fc"]
    assert [n for n in tv_eval if "." not in n and n not in ("conv1", "bn1")] == \
        [n for n in fast_eval if "." not in n and n != "contiguous" and not n.startswith("_")]
    tv_blocks = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in tv_eval if n.startswith("layer")))
    assert tv_blocks == blocks


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_feature_extractor_matches_torchvision(mode, monkeypatch):
    """create_feature_extractor with the usual return nodes: the features equal torchvision's
    (float64), running statistics too, and the extracted module runs fused (nn.Conv2d's forward is
    never called)."""
    a, b = (m.double() for m in small_pair((2, 1, 1, 1)))
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    nodes = {n: n for n in USUAL_NODES}
    fa, fb = create_feature_extractor(a, nodes), create_feature_extractor(b, nodes)
    for m in (fa, fb):
        getattr(m, mode)()
    calls = []
    conv_forward = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(self) or conv_forward(self, x))
    ya = fa(x)
    calls.clear()
    yb = fb(x)
    assert calls == []
    assert ya.keys() == yb.keys()
    for k in ya:
        close64(yb[k], ya[k], k)
    for (name, p), q in zip(fa.state_dict().items(), fb.state_dict().values()):
        close64(q.double(), p.double(), name)


def test_symbolic_trace_runs_fused_blocks():
    """torch.fx.symbolic_trace: blocks are call_module nodes, the stem one fused call; the
    GraphModule's output equals the model's exactly and its gradients equal torchvision's."""
    a, b = (m.double() for m in small_pair())
    gm = torch.fx.symbolic_trace(b)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert calls == ["maxpool", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "avgpool", "fc"]
    assert [n.name for n in gm.graph.nodes if n.op == "call_function"][0] == "relu"
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    b.eval(), gm.eval()
    torch.testing.assert_close(gm(x), b(x), rtol=0, atol=0)
    b.train(), gm.train()
    ya, yb = a(x), gm(x)
    close64(yb, ya, "output")
    ya.sum().backward(), yb.sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        close64(q.grad, p.grad, n)


# ------------------------------------------------------------------------------------------ TorchScript

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_jit_trace_default_check(mode):
    """torch.jit.trace with its default check_trace (re-traces and compares graphs and outputs); the
    traced graph runs resnet_fast's fused ops and matches torchvision."""
    a, b = small_pair()
    for m in (a, b):
        getattr(m, mode)()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        traced = torch.jit.trace(b, x)
        assert "resnet_fast::" in str(traced.inlined_graph)
        torch.testing.assert_close(traced(x), a(x), rtol=1e-4, atol=1e-4)


def test_jit_script_is_torchvision_over_shared_parameters():
    """torch.jit.script compiles torchvision's (unfused) ResNet over the model's own parameters:
    the model itself is unchanged, the scripted one follows its parameter updates, saves and loads."""
    a, b = small_pair()
    a.eval(), b.eval()
    sm = torch.jit.script(b)
    assert type(b.layer1[0]) is resnet_fast.BasicBlock  # scripting did not alter the model
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(sm(x), torch.jit.script(a)(x), rtol=0, atol=0)
        b.layer1[0].conv1.weight.mul_(0.5)
        a.layer1[0].conv1.weight.mul_(0.5)
        torch.testing.assert_close(sm(x), a(x), rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    torch.jit.save(sm, buf)
    buf.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(buf)(x), sm(x), rtol=0, atol=0)


def test_jit_script_variants_raise_clearly():
    model = resnet_fast.resnet18(num_classes=10, shortcut="A")
    with pytest.raises(TypeError, match="torch.jit.trace"):
        torch.jit.script(model)


# ------------------------------------------------------------------------------------------ ONNX

def _onnx_run(model, x, dynamo):
    import onnx
    import onnxruntime

    buf = io.BytesIO()
    prog = torch.onnx.export(model, (x,), None if dynamo else buf, dynamo=dynamo, verbose=False)
    if dynamo:
        buf.write(prog.model_proto.SerializeToString())
    proto = onnx.load_from_string(buf.getvalue())
    domains = {n.domain for n in proto.graph.node}
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], domains


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_eval_matches_torchvision(dynamo):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    a, b = small_pair()
    a.eval(), b.eval()
    x = torch.randn(2, 3, 48, 48)
    out_b, domains = _onnx_run(b, x, dynamo)
    out_a, _ = _onnx_run(a, x, dynamo)
    assert domains <= {"", "ai.onnx"}, f"non-standard ONNX domains {domains}"
    torch.testing.assert_close(torch.from_numpy(out_b), torch.from_numpy(out_a), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out_b), b(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_training_mode_like_torchvision():
    """A training-mode model exports (unfused, as torchvision's) and the exported graph computes
    torchvision's training-mode output."""
    pytest.importorskip("onnxruntime")
    a, b = small_pair()
    x = torch.randn(2, 3, 48, 48)
    out_b, _ = _onnx_run(b, x, True)
    out_a, _ = _onnx_run(a, x, True)
    torch.testing.assert_close(torch.from_numpy(out_b), torch.from_numpy(out_a), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ torch.export

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_export_dynamic_batch_save_load(mode):
    """torch.export keeps resnet_fast's ops, a dynamic batch, and save/load; outputs and running
    statistics equal eager torchvision's."""
    a, b = small_pair()
    for m in (a, b):
        getattr(m, mode)()
    batch = torch.export.Dim("batch", min=2, max=16)
    ep = torch.export.export(b, (torch.randn(2, 3, 48, 48),), dynamic_shapes=({0: batch},))
    assert "resnet_fast" in str(ep.graph)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    x = torch.randn(5, 3, 48, 48)
    torch.testing.assert_close(loaded(x), a(x), rtol=1e-4, atol=1e-4)
    if mode == "train":
        rm = dict(loaded.named_buffers())["layer2.0.bn1.running_mean"]
        torch.testing.assert_close(rm, a.layer2[0].bn1.running_mean, rtol=1e-4, atol=1e-5)
