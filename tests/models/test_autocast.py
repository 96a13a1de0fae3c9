"""torch.autocast: resnet_fast runs its convolutions in the autocast dtype as eager does (the custom ops
are not autocast-aware, so resnet_fast.functional casts explicitly), and the ops themselves keep
their callers' dtypes under autocast (what their fake kernels promise)."""

import pytest
import torch

from resnet_fast import ops
from helpers import assert_steps_close, model_triplet, record_steps


def _dtypes(device):
    return [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_autocast_matches_eager(mode, device):
    for dtype in _dtypes(device):
        torch.manual_seed(0)
        tv, fast, ref = model_triplet("resnet18", device, convert=True, num_classes=10, zero_init_residual=True)
        for m in (tv, fast, ref):
            m.train(mode == "train")
        x = torch.randn(4, 3, 32, 32, device=device)
        target = torch.randint(0, 10, (4,), device=device)
        seen = []
        fast.avgpool.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
        train = mode == "train"
        r_fast = record_steps(fast, x, target, lr=None, autocast_dtype=dtype, train=train, eval_after=False)
        assert seen == [dtype], "the convolutions did not run in the autocast dtype"
        r_eager = record_steps(tv, x, target, lr=None, autocast_dtype=dtype, train=train, eval_after=False)
        r_ref = record_steps(ref, x.double(), target, lr=None, train=train, eval_after=False)
        assert r_fast["step0.out"].dtype == r_eager["step0.out"].dtype == dtype
        # out, loss (max-abs), input grad, every parameter gradient and buffer, each against float64
        assert_steps_close(str(dtype), r_fast, r_eager, r_ref, dtype=dtype, grouped=False)


def test_ops_keep_dtypes_under_autocast(device):
    x = torch.randn(2, 4, 6, 6, device=device)
    w = torch.randn(5, 4, 3, 3, device=device)
    for dt in _dtypes(device):
        with torch.autocast(device, dtype=dt):
            y, mean, var = ops.conv_bn_stats(x, None, None, None, False, w, [1, 1], [1, 1], [1, 1], 1)
            out = ops.conv_bias_act(x, w, torch.zeros(5, device=device), None, True, [1, 1], [1, 1], [1, 1], 1)
        assert y.dtype == out.dtype == torch.float32 and mean.dtype == var.dtype == torch.float32
