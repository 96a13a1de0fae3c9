"""Hooks, module surgery, checkpointing and pruning behave as on torchvision's ResNet.

Every test runs the same thing on torchvision's model and on resnet_fast's (same weights) and
compares what user code sees: hook arguments, outputs, gradients, running statistics and counts,
in float64 (so fused and unfused agree to 1e-9; in float32 they agree to rounding only).
Small nets (one block per stage, or resnet18 at 32-64 px) keep this file fast."""

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import resnet as tv

import resnet_fast


def pair(block="basic", layers=(1, 1, 1, 1), **kwargs):
    """(torchvision, resnet_fast) nets with the same weights."""
    tv_block, fast_block = (tv.BasicBlock, resnet_fast.BasicBlock) if block == "basic" else \
        (tv.Bottleneck, resnet_fast.Bottleneck)
    a = tv.ResNet(tv_block, list(layers), num_classes=10, **kwargs)
    b = resnet_fast.ResNet(fast_block, list(layers), num_classes=10, **kwargs)
    b.load_state_dict(a.state_dict())
    return a.double(), b.double()


def close(actual, expected, what=""):
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9 * scale, msg=lambda m: f"{what}: {m}")


def assert_same_state(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        close(y, x, name)


HOOKED = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2.0", "layer2.0.conv1", "layer2.0.bn2",
          "layer2.0.relu", "layer2.0.downsample", "layer2.0.downsample.1", "layer3", "layer4", "avgpool", "fc"]


@pytest.mark.parametrize("mode,kind", [("train", "forward"), ("eval", "pre")])
def test_hooks_fire_with_torchvision_tensors(mode, kind):
    """Forward hooks and pre-hooks on the stem, blocks, their inner modules and stages: same calls
    in the same order with the same tensors; gradients and running statistics still match."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seen = {}
    for name, model in zip(("tv", "fast"), pair()):
        getattr(model, mode)()
        calls = seen[name] = []
        for path in HOOKED:
            mod = model.get_submodule(path)
            if kind == "forward":
                mod.register_forward_hook(lambda m, args, out, p=path: calls.append((p, out.detach().clone())))
            else:
                mod.register_forward_pre_hook(lambda m, args, p=path: calls.append((p, args[0].detach().clone())))
        xi = x.clone().requires_grad_(True)
        model(xi).square().sum().backward()
        calls.append(("input.grad", xi.grad))
    assert [p for p, _ in seen["fast"]] == [p for p, _ in seen["tv"]]
    for (path, got), (_, want) in zip(seen["fast"], seen["tv"]):
        close(got, want, path)


def test_grad_cam_on_layer4():
    """Grad-CAM: a forward hook keeps layer4's activation and a tensor hook its gradient."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    maps = []
    for model in pair():
        model.eval()
        store = {}

        def keep(m, args, out, store=store):
            store["act"] = out
            out.register_hook(lambda g: store.__setitem__("grad", g))

        model.layer4.register_forward_hook(keep)
        model(x)[:, 3].sum().backward()
        weights = store["grad"].mean(dim=(2, 3), keepdim=True)
        maps.append(F.relu((weights * store["act"]).sum(1)).detach())
    close(maps[1], maps[0], "cam")


def test_backward_hooks_and_global_hooks():
    """A full backward hook on an inner conv, and a global forward hook on every module."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    got = []
    for model in pair():
        grads, outs = [], []
        model.layer1[0].conv2.register_full_backward_hook(lambda m, gi, go: grads.append(go[0].clone()))
        handle = nn.modules.module.register_module_forward_hook(
            lambda m, args, out: outs.append(out.detach().clone()) if isinstance(m, nn.BatchNorm2d) else None)
        try:
            model(x).sum().backward()
        finally:
            handle.remove()
        got.append((grads, outs))
    (ga, oa), (gb, ob) = got
    assert len(ga) == len(gb) == 1 and len(oa) == len(ob) == 12
    close(gb[0], ga[0], "conv2 grad_output")
    for i, (p, q) in enumerate(zip(ob, oa)):
        close(p, q, f"bn output {i}")


def test_hook_removal_restores_fusion(monkeypatch):
    """With the hook removed, the block runs fused again (nn.Conv2d.forward no longer called)."""
    _, model = pair()
    handle = model.layer2[0].conv1.register_forward_hook(lambda *a: None)
    calls = []
    orig = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(self) or orig(self, x))
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert calls == [model.layer2[0].conv1, model.layer2[0].conv2, model.layer2[0].downsample[0]]
    handle.remove()
    calls.clear()
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert calls == []


def test_stage_replaced_or_wrapped():
    """model.layer4 = nn.Identity() (with a matching head), a stage wrapped in a module, a block
    with its forward overridden on the instance."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 0.5

    outs = []
    for model in pair():
        model.layer4 = nn.Identity()
        model.fc = nn.Linear(256, 10, dtype=torch.float64)
        model.layer2 = Scaled(model.layer2)
        block = model.layer3[0]
        block.forward = lambda x, block=block: type(block).forward(block, x) + 1.0
        outs.append(model)
    outs[1].fc.load_state_dict(outs[0].fc.state_dict())
    ya, yb = outs[0](x), outs[1](x)
    close(yb, ya, "output")
    ya.sum().backward(), yb.sum().backward()
    for (n, p), q in zip(outs[0].named_parameters(), outs[1].parameters()):
        close(q.grad, p.grad, n)
    assert_same_state(*outs)


class CheckpointedStage(nn.Sequential):
    """Activation checkpointing per block, as memory-saving training scripts do."""

    reentrant = False

    def forward(self, x):
        for block in self:
            x = checkpoint(block, x, use_reentrant=self.reentrant)
        return x


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_stages_match_running_stats(reentrant):
    """Checkpointing really runs (recompute in backward) and running statistics are updated on forward
    and on recompute, as torchvision's are: counts and values equal, gradients equal."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    models = pair(layers=(1, 2, 1, 1))
    for model in models:
        for name in ("layer2", "layer3"):
            stage = CheckpointedStage(*getattr(model, name))
            stage.reentrant = reentrant
            setattr(model, name, stage)
    grads = []
    for model in models:
        xi = x.detach().clone().requires_grad_(True)
        model(xi).square().sum().backward()
        grads.append(xi.grad)
    close(grads[1], grads[0], "input grad")
    assert models[1].layer2[1].bn1.num_batches_tracked.item() == 2  # forward + recompute
    assert models[1].layer1[0].bn1.num_batches_tracked.item() == 1
    assert_same_state(*models)


def test_pruning():
    """torch.nn.utils.prune (a forward pre-hook recomputing weight = weight_orig * mask) on an inner
    conv and on the stem: outputs, gradients of weight_orig and repeated training steps match.
    (48 px: layer4 is 2x2; at 1x1 BatchNorm over two values makes float64 runs differ by 1e-9.)"""
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    models = pair()
    for model in models:
        torch.manual_seed(0)
        for conv in (model.conv1, model.layer1[0].conv1, model.layer3[0].downsample[0]):
            prune.l1_unstructured(conv, "weight", amount=0.5)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]
    for step in range(2):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            close(q.grad, p.grad, f"step {step} {n}")
    assert_same_state(*models)


def test_subclassed_block_runs_its_forward():
    class Doubling(resnet_fast.BasicBlock):
        def forward(self, x):
            return 2 * super().forward(x)

    block = Doubling(8, 8).double()
    ref = tv.BasicBlock(8, 8).double()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    close(block(x), 2 * ref(x), "output")


def test_transactional_with_hooks_on_blocks():
    """A model forward that fails leaves running statistics untouched, also when hooks on the stages
    see each block's result (the blocks ran and succeeded: their updates wait for the model)."""
    model = resnet_fast.resnet18(num_classes=10)
    seen = []
    model.layer3.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))  # layer4 is 1x1: one value per channel
    assert seen == [(1, 256, 2, 2)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hook_on_every_module():
    """A hook on every module (all unfused): exactly torchvision's forward and hook calls."""
    a, b = pair(layers=(2, 1, 1, 1))
    count = [0, 0]
    for i, m in enumerate((a, b)):
        for mod in m.modules():
            mod.register_forward_hook(lambda *args, i=i: count.__setitem__(i, count[i] + 1))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    close(b(x), a(x), "output")
    assert count[0] == count[1]
