"""Drop-in behaviour: module tree, state_dict both ways, initialization, weights=, from_torchvision,
eval <-> train refolding, BatchNorm options, and blocks that cannot fuse."""

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv

import resnet_fast
from helpers import BUILDERS, assert_float64_exact, record_steps


@pytest.mark.parametrize("arch", BUILDERS)
def test_same_init_tree_and_state_dict(arch):
    torch.manual_seed(1)
    a = getattr(torchvision.models, arch)()
    torch.manual_seed(1)
    b = getattr(resnet_fast, arch)()
    assert isinstance(b, resnet_fast.ResNet) and isinstance(b, tv.ResNet)
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:  # same seed, same initial weights (torchvision's init in torchvision's order)
        assert torch.equal(sa[k], sb[k]), k
    b.load_state_dict(sa, strict=True)
    a.load_state_dict(sb, strict=True)


def test_block_classes_and_names():
    m = resnet_fast.resnet50()
    assert isinstance(m.layer1[0], resnet_fast.Bottleneck) and isinstance(m.layer1[0], tv.Bottleneck)
    assert isinstance(resnet_fast.resnet18().layer1[0], resnet_fast.BasicBlock)
    assert m.layer1[0].bn1.running_mean.shape == (64,)
    assert m.layer1[0].downsample[1].num_batches_tracked.item() == 0


def test_weights_through_torchvision_machinery(monkeypatch):
    """weights= (enum, string, legacy pretrained=True) loads what torchvision's Weights provides."""
    source = torchvision.models.resnet18()
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append((self, kwargs))
        return source.state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    for weights in (tv.ResNet18_Weights.IMAGENET1K_V1, "IMAGENET1K_V1", "DEFAULT"):
        m = resnet_fast.resnet18(weights=weights)
        assert m.fc.out_features == 1000
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), source.state_dict().values()))
    with pytest.warns(UserWarning):
        resnet_fast.resnet18(pretrained=True)
    assert calls[0][1] == {"progress": True, "check_hash": True}
    with pytest.raises(TypeError):  # torchvision's own check
        resnet_fast.resnet18(weights=tv.ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError):
        resnet_fast.resnet18(weights=tv.ResNet18_Weights.IMAGENET1K_V1, num_classes=10)


def test_from_torchvision_shares_parameters():
    model = torchvision.models.resnet18(num_classes=10)
    fast = resnet_fast.from_torchvision(model)
    assert type(fast) is resnet_fast.ResNet and type(model) is tv.ResNet
    assert fast.conv1.weight is model.conv1.weight
    assert fast.layer2[0].bn1.running_mean is model.layer2[0].bn1.running_mean
    assert type(model.layer1[0]) is tv.BasicBlock  # the original is untouched
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ref = copy.deepcopy(model).double()
    fast.double()  # in place on shared parameters: model is float64 too now
    assert model.conv1.weight.dtype == torch.float64
    assert_float64_exact("from_torchvision", record_steps(fast, x, torch.tensor([1, 2]), 1),
                         record_steps(ref, x, torch.tensor([1, 2]), 1))
    with pytest.raises(TypeError, match="torchvision.models.ResNet"):
        resnet_fast.from_torchvision(nn.Linear(2, 2))


def test_custom_norm_layer_runs_unfused():
    """A block with another norm layer (documented: it runs torchvision's own forward)."""
    norm = functools.partial(nn.GroupNorm, 8)
    a = torchvision.models.resnet18(num_classes=10, norm_layer=lambda c: norm(c)).double()
    b = resnet_fast.resnet18(num_classes=10, norm_layer=lambda c: norm(c)).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)


def test_frozen_batchnorm_from_torchvision():
    a = torchvision.models.resnet50(num_classes=10, norm_layer=torchvision.ops.FrozenBatchNorm2d).double()
    b = resnet_fast.from_torchvision(copy.deepcopy(a))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)


BN_OPTIONS = [{"momentum": None}, {"momentum": 0.3, "eps": 1e-3}, {"affine": False},
              {"track_running_stats": False}]


@pytest.mark.parametrize("bn_kwargs", BN_OPTIONS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_options_block(bn_kwargs, mode):
    """nn.BatchNorm2d's semantics for every option, in a Bottleneck with a projection shortcut (dual BN),
    over three steps, in float64: outputs, gradients, running statistics and counters."""
    norm = functools.partial(nn.BatchNorm2d, **bn_kwargs)
    down = lambda: nn.Sequential(tv.conv1x1(32, 64, 2), norm(64))  # noqa: E731
    torch.manual_seed(0)
    a = tv.Bottleneck(32, 16, stride=2, downsample=down(), norm_layer=norm).double()
    b = resnet_fast.Bottleneck(32, 16, stride=2, downsample=down(), norm_layer=norm).double()
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d) and bn.affine:
                nn.init.uniform_(bn.weight, 0.5, 1.5), nn.init.uniform_(bn.bias, -0.5, 0.5)
        getattr(m, mode)()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 32, 12, 12, dtype=torch.float64).relu()
    for step in range(3):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = a(xa), b(xb)
        torch.testing.assert_close(yb, ya, rtol=0, atol=1e-10)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=1e-10)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-9, msg=lambda m, n=n: f"{n}: {m}")
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-12, msg=lambda m, k=k: f"step {step} {k}: {m}")


@pytest.mark.parametrize("bn_kwargs", [o for o in BN_OPTIONS if o.get("affine", True)])
def test_batchnorm_options_model(bn_kwargs):
    """The same at model level over three SGD steps (torchvision's ResNet needs affine BatchNorm)."""
    norm = functools.partial(nn.BatchNorm2d, **bn_kwargs)
    a = torchvision.models.resnet18(num_classes=10, norm_layer=norm).double()
    b = resnet_fast.resnet18(num_classes=10, norm_layer=norm).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 48, 48, dtype=torch.float64)
    t = torch.randint(0, 10, (4,))
    assert_float64_exact(str(bn_kwargs), record_steps(b, x, t, 3), record_steps(a, x, t, 3))


def test_eval_train_switching_refolds():
    """Folded eval weights follow every change: an optimizer step, a training forward (running
    statistics), load_state_dict, and in-place edits under no_grad."""
    a = torchvision.models.resnet18(num_classes=10).double()
    b = resnet_fast.resnet18(num_classes=10).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def check():
        a.eval(), b.eval()
        with torch.no_grad():
            torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)

    check()
    for m in (a, b):  # training forward: running statistics change
        m.train()
        m(x)
    check()
    with torch.no_grad():  # in place while in eval mode: no train() in between
        for m in (a, b):
            m.layer1[0].bn1.running_var.mul_(2.0)
            m.layer2[0].conv1.weight.add_(0.01)
            m.layer3[1].bn2.weight.mul_(-1.0)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)
    sd = torchvision.models.resnet18(num_classes=10).double().state_dict()
    a.load_state_dict(sd), b.load_state_dict(sd)
    check()
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    b.train()
    b(x).sum().backward()
    opt.step()
    a.load_state_dict(b.state_dict())
    check()


def test_block_forward_alone():
    """A block called on its own applies its own running-statistics updates."""
    a = torchvision.models.resnet50().layer2[0].double()
    b = resnet_fast.resnet50().layer2[0].double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 256, 16, 16, dtype=torch.float64).relu()
    torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)
    for (n, p), q in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=n)


def test_forward_runs_fused_ops(monkeypatch):
    """nn.Conv2d / nn.BatchNorm2d are parameter holders on the fused path: never called."""
    def forbidden(self, *args):
        raise AssertionError(f"{type(self).__name__}.forward was called")

    model = resnet_fast.resnet50(num_classes=10)
    monkeypatch.setattr(nn.BatchNorm2d, "forward", forbidden)
    monkeypatch.setattr(nn.Conv2d, "forward", forbidden)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    model.eval()
    model(x)


def test_works_without_native_extension():
    """The package imports and runs on the plain-PyTorch backend when resnet_fast._C is missing."""
    import subprocess
    import sys

    code = (
        "import sys, torch; sys.modules['resnet_fast._C'] = None\n"
        "import resnet_fast\n"
        "info = resnet_fast.backend_info()\n"
        "assert info['native_extension'] != 'loaded', info\n"
        "assert set(info['cpu'].values()) == {'reference'}, info\n"
        "m = resnet_fast.resnet18(num_classes=4)\n"
        "m(torch.randn(2, 3, 32, 32)).sum().backward()\n"
        "m.eval(); m(torch.randn(1, 3, 32, 32))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
