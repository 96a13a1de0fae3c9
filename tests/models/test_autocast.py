"""torch.autocast: resnet_fast runs its convolutions in the autocast dtype as eager does (the custom ops
are not autocast-aware, so resnet_fast.functional casts explicitly), and the ops themselves keep
their callers' dtypes under autocast (what their fake kernels promise)."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast
from resnet_fast import ops
from helpers import assert_close_to_ref


def _step(model, x, target, device, dtype):
    xi = x.clone().requires_grad_(True)
    ctx = torch.autocast(device, dtype=dtype) if dtype is not None else torch.autocast(device, enabled=False)
    with ctx:
        out = model(xi)
        loss = F.cross_entropy(out, target)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return out, loss, xi.grad, grads


def _dtypes(device):
    return [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_autocast_matches_eager(mode, device):
    for dtype in _dtypes(device):
        torch.manual_seed(0)
        tv = torchvision.models.resnet18(num_classes=10, zero_init_residual=True).to(device)
        fast = resnet_fast.from_torchvision(copy.deepcopy(tv))
        ref = copy.deepcopy(tv).double()
        tv = tv.to(memory_format=torch.channels_last)
        for m in (tv, fast, ref):
            m.train(mode == "train")
        x = torch.randn(4, 3, 32, 32, device=device)
        target = torch.randint(0, 10, (4,), device=device)
        seen = []
        fast.avgpool.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
        out, loss, gx, grads = _step(fast, x, target, device, dtype)
        assert seen == [dtype], "the convolutions did not run in the autocast dtype"
        out_e, loss_e, gx_e, grads_e = _step(tv, x, target, device, dtype)
        out64, loss64, gx64, grads64 = _step(ref, x.double(), target, device, None)
        assert out.dtype == out_e.dtype == dtype
        assert_close_to_ref("out", out, out_e, out64, dtype=dtype, norm="l2")
        assert_close_to_ref("loss", loss, loss_e, loss64, dtype=dtype)
        assert_close_to_ref("input grad", gx, gx_e, gx64, dtype=dtype, norm="l2")
        for name in grads64:
            assert_close_to_ref(f"grad {name}", grads[name], grads_e[name], grads64[name], dtype=dtype, norm="l2")
        for name, buf in ref.named_buffers():
            b = dict(fast.named_buffers())[name]
            assert_close_to_ref(f"buffer {name}", b, dict(tv.named_buffers())[name], buf, dtype=dtype, norm="l2")


def test_ops_keep_dtypes_under_autocast(device):
    x = torch.randn(2, 4, 6, 6, device=device)
    w = torch.randn(5, 4, 3, 3, device=device)
    for dt in _dtypes(device):
        with torch.autocast(device, dtype=dt):
            y, mean, var = ops.conv_bn_stats(x, None, None, None, False, w, [1, 1], [1, 1], [1, 1], 1)
            out = ops.conv_bias_act(x, w, torch.zeros(5, device=device), None, True, [1, 1], [1, 1], [1, 1], 1)
        assert y.dtype == out.dtype == torch.float32 and mean.dtype == var.dtype == torch.float32
