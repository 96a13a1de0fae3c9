"""torch.func (grad, per-sample vmap(grad), functional_call), saving (torch.save / pickle / deepcopy
after any forward), and the workflows that must keep working: DataParallel, SyncBatchNorm
conversion, dtype / memory-format moves, IntermediateLayerGetter and FPN backbones. Each is
compared with torchvision's model doing the same thing."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
from torchvision.models import resnet as tv

import resnet_fast


def pair(block="basic", dtype=torch.float64):
    tv_block, fast_block = (tv.BasicBlock, resnet_fast.BasicBlock) if block == "basic" else \
        (tv.Bottleneck, resnet_fast.Bottleneck)
    a = tv.ResNet(tv_block, [1, 1, 1, 1], num_classes=10)
    b = resnet_fast.ResNet(fast_block, [1, 1, 1, 1], num_classes=10)
    b.load_state_dict(a.state_dict())
    return a.to(dtype), b.to(dtype)


def close(actual, expected, what="", rel=1e-9):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale, msg=lambda m: f"{what}: {m}")


def per_sample_grads(model, params, x, y):
    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("mode", ["eval", "train_replaced"])
def test_func_grad_and_per_sample_grads(mode):
    """grad and vmap(grad) (per-sample gradients) equal torchvision's; in training mode after
    torch.func.replace_all_batch_norm_modules_ (batch statistics without buffer updates)."""
    a, b = pair()
    for m in (a, b):
        m.eval() if mode == "eval" else replace_all_batch_norm_modules_(m)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    params = {k: v.detach() for k, v in a.named_parameters()}
    if mode == "eval":
        ga, gb = per_sample_grads(a, params, x, y), per_sample_grads(b, params, x, y)
        for k in ga:
            close(gb[k], ga[k], f"per-sample {k}")
    whole = [grad(lambda p, m=m: F.cross_entropy(functional_call(m, p, (x,)), y))(params) for m in (a, b)]
    for k in whole[0]:
        close(whole[1][k], whole[0][k], f"grad {k}")


def test_func_grad_train_mode_refused_like_torchvision():
    """Without replace_all_batch_norm_modules_, torch.func refuses the in-place running-statistics
    update in training mode: for torchvision's model and resnet_fast's alike."""
    a, b = pair()
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2])
    for m in (a, b):
        params = {k: v.detach() for k, v in m.named_parameters()}
        with pytest.raises(RuntimeError, match="in-place"):
            grad(lambda p: F.cross_entropy(functional_call(m, p, (x,)), y))(params)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_functional_call_runs_fused(mode):
    """torch.func.functional_call outside any transform (swapped parameters): the fused path, same
    output and parameter gradients as torchvision's."""
    a, b = pair("bottleneck")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    params = {k: (v.detach() * 1.1).requires_grad_(True) for k, v in a.named_parameters()}
    outs = []
    for m in (a, b):
        getattr(m, mode)()
        out = functional_call(m, params, (x,))
        outs.append((out, torch.autograd.grad(out.sum(), list(params.values()))))
    close(outs[1][0], outs[0][0], "output")
    for name, g1, g0 in zip(params, outs[1][1], outs[0][1]):
        close(g1, g0, name)


def _roundtrip(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_save_pickle_deepcopy_after_any_forward():
    """torch.save(model), pickle and deepcopy after eval under no_grad / inference_mode / grad, a
    training step and a memory_format change: the copy computes what the model computes, and no
    cached folded weight is saved (the file is the size of the state_dict's)."""
    a, b = pair(dtype=torch.float32)
    x = torch.randn(2, 3, 32, 32)
    b.train()
    b(x).sum().backward()
    b.eval()
    with torch.no_grad():
        b(x)
    with torch.inference_mode():
        b(x)
    b(x)
    b.memory_format = torch.contiguous_format
    sd = io.BytesIO()
    torch.save(b.state_dict(), sd)
    for copied in (_roundtrip(b), pickle.loads(pickle.dumps(b)), copy.deepcopy(b)):
        assert copied.memory_format == torch.contiguous_format
        assert all("_resnet_fast_folded" not in m.__dict__ or m.__dict__["_resnet_fast_folded"].key is None
                   for m in copied.modules())
        with torch.no_grad():
            torch.testing.assert_close(copied(x), b(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(b, buf)
    assert len(buf.getvalue()) < 1.05 * len(sd.getvalue())


def test_dataparallel_and_moves():
    """nn.DataParallel (one device: calls the module), .double() / .float() / channels_last moves."""
    a, b = pair(dtype=torch.float32)
    x = torch.randn(2, 3, 32, 32)
    dp = nn.DataParallel(b)
    torch.testing.assert_close(dp(x), a(x), rtol=1e-4, atol=1e-4)
    b.load_state_dict(a.state_dict())  # (float32 running statistics differ by rounding after that step)
    a.double(), b.double().to(memory_format=torch.channels_last)
    b.eval(), a.eval()
    with torch.no_grad():
        close(b(x.double()), a(x.double()), "after moves")


def test_sync_batchnorm_conversions_single_process():
    """resnet_fast.convert_sync_batchnorm (training) and nn.SyncBatchNorm.convert_sync_batchnorm (eval:
    its training forward needs a process group): without one, the local batch's statistics, as the
    torchvision model computes; the converted models stay fused."""
    a, b = pair()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    synced = resnet_fast.convert_sync_batchnorm(copy.deepcopy(b))
    assert type(synced.layer1[0].bn1) is resnet_fast.SyncBatchNorm2d and synced.layer1[0]._fusable()
    nn_synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(b)).eval()
    assert type(nn_synced.layer1[0].bn1) is nn.SyncBatchNorm and nn_synced.layer1[0]._fusable()
    with torch.no_grad():
        close(nn_synced(x), copy.deepcopy(a).eval()(x), "nn.SyncBatchNorm eval")
    close(synced(x), a(x), "SyncBatchNorm2d train")
    for (name, p), q in zip(a.named_buffers(), synced.buffers()):
        close(q, p, name)


def test_intermediate_layer_getter_and_fpn_backbone():
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    a, b = pair("bottleneck")
    a.eval(), b.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    layers = {"layer2": "feat2", "layer4": "feat4"}
    with torch.no_grad():
        ra, rb = IntermediateLayerGetter(a, layers)(x), IntermediateLayerGetter(b, layers)(x)
        for k in ra:
            close(rb[k], ra[k], k)
        fa = _resnet_fpn_extractor(copy.deepcopy(a), 3).double()
        fb = _resnet_fpn_extractor(copy.deepcopy(b), 3).double()
        fb.load_state_dict(fa.state_dict())
        oa, ob = fa(x), fb(x)
        for k in oa:
            close(ob[k], oa[k], f"fpn {k}")
