"""torchvision's own model tests (test/test_models.py: test_classification_model and
test_resnet_dilation), their logic run on all 10 resnet_fast builders.

The expected output is not torchvision's stored expect file but torchvision's own builder run
with the same seed (so the same weights, checked) on the same input; the checks and tolerances
are torchvision's: output within 1e-3, torch.fx's symbolic_trace equal to eager, autocast within
0.1 on CUDA (except the models torchvision lists as flaky under autocast), a gradient reaching the
input, and TorchScript within 1e-4 of eager and 3e-4 after save / load. To keep the suite's time
within budget, TorchScript (which scripts torchvision's unfused ResNet, the same code for every
builder) runs on one builder per block kind (SUBSET), and there the input gradient is also
compared with torchvision's, in float64 (in float32 the eval-mode input gradient of a
default-initialized deep ResNet is dominated by rounding noise, in torchvision's model too). Input
size: 64x64, which torchvision itself uses for its slow models (resnext101_32x8d, resnext101_64x4d,
wide_resnet101_2), for every builder (224x224 runs in test_equivalence's slow tests)."""

import copy
import os
import tempfile
from collections import OrderedDict

import pytest
import torch
import torchvision

import resnet_fast

BUILDERS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
SUBSET = ("resnet18", "resnext50_32x4d")  # basic; bottleneck and grouped: TorchScript, float64 grads
AUTOCAST_FLAKY = ("resnet101", "resnet152", "wide_resnet101_2")  # torchvision's autocast_flaky_numerics


def _build(module, arch, device):
    torch.manual_seed(0)
    return getattr(module, arch)(num_classes=50).eval().to(device)


def _script_roundtrip(sm):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "script.pt")
        sm.save(path)
        return torch.jit.load(path)


@pytest.mark.parametrize("arch", BUILDERS)
def test_classification_model(arch, device):
    size = 64
    model = _build(resnet_fast, arch, device)
    x = torch.rand(1, 3, size, size).to(device)  # on the CPU generator, as torchvision does
    reference = _build(torchvision.models, arch, device)
    for (name, p), q in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), f"same seed, different initial {name}"
    out = model(x)
    expected = reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
    assert out.shape[-1] == 50

    if arch in SUBSET:
        sm = torch.jit.script(model)
        with torch.no_grad():
            script_out = sm(x)
        torch.testing.assert_close(out, script_out, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(script_out, _script_roundtrip(sm)(x), rtol=3e-4, atol=3e-4)

    fx_out = torch.fx.symbolic_trace(model)(x)
    torch.testing.assert_close(out, fx_out)

    if device == "cuda":
        with torch.autocast("cuda"):
            auto = model(x)
        if arch not in AUTOCAST_FLAKY:
            torch.testing.assert_close(auto.float(), expected, rtol=0.1, atol=0.1)
        assert auto.shape[-1] == 50

    xi = x.clone().requires_grad_(True)
    model(xi)[0].sum().backward()
    assert xi.grad is not None
    if arch in SUBSET:
        grads = []
        for m in (copy.deepcopy(model).double(), copy.deepcopy(reference).double()):
            xi = x.double().requires_grad_(True)
            m(xi)[0].sum().backward()
            grads.append(xi.grad)
        scale = grads[1].abs().max().item()
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-9 * scale)


def _sliced(model, stop="layer4"):
    """The model's children up to `stop`, in an nn.Sequential (torchvision's _make_sliced_model)."""
    layers = OrderedDict()
    for name, layer in model.named_children():
        layers[name] = layer
        if name == stop:
            break
    return torch.nn.Sequential(layers)


@pytest.mark.parametrize("dilate", [(a, b, c) for a in (True, False) for b in (True, False) for c in (True, False)],
                         ids=lambda d: "".join("D" if v else "s" for v in d))
def test_resnet_dilation(dilate):
    """resnet50 with replace_stride_with_dilation, sliced to layer4, eval: the output stride is
    32 / 2^(dilated stages), and the features equal torchvision's. (32x32 input rather than
    torchvision's 224x224: 2^k instead of 7 * 2^k positions per side.)"""
    outs = []
    for module in (resnet_fast, torchvision.models):
        torch.manual_seed(0)
        model = _sliced(module.resnet50(replace_stride_with_dilation=dilate)).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            outs.append(model(torch.rand(1, 3, 32, 32)))
    f = 2 ** sum(dilate)
    assert outs[0].shape == (1, 2048, f, f)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
