"""Bad input: a clear Python exception naming the problem, never a crash, and running statistics
untouched by a call that failed."""


import pytest
import torch

import resnet_fast
from resnet_fast import ops


@pytest.fixture
def model():
    return resnet_fast.resnet18(num_classes=10)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(before, m):
    return all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("x,exc,match", [
    (torch.randn(3, 64, 64), ValueError, "4-D"),
    (torch.randn(2, 4, 64, 64), ValueError, "3 channels"),
    (torch.randint(0, 255, (2, 3, 64, 64)), TypeError, "floating point"),
    (torch.randn(2, 3, 64, 64, dtype=torch.float64), TypeError, "dtype"),
    (torch.randn(2, 3, 64, 64, device="meta"), RuntimeError, "meta"),
    (torch.randn(0, 3, 64, 64), ValueError, "empty batch"),
    (torch.randn(1, 3, 32, 32), ValueError, "more than 1 value per channel"),  # layer4 is 1x1: count 1
])
def test_bad_input_training(model, x, exc, match):
    before = _state(model)
    with pytest.raises(exc, match=match):
        model(x)
    assert _unchanged(before, model)


def test_strided_input_is_fine(model):
    """Not bad input: any strides work (the model copies into its memory format)."""
    x = torch.randn(2, 3, 128, 64)[:, :, ::2]
    model.eval()
    torch.testing.assert_close(model(x), model(x.contiguous()))


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([1.0, 2.0])


def test_empty_batch_eval_is_eager_behaviour(model):
    model.eval()
    assert model(torch.randn(0, 3, 64, 64)).shape == (0, 10)


def test_batch_one_training_fails_cleanly_where_eager_corrupts():
    """eager raises at layer4 *after* updating the earlier BatchNorms; resnet_fast updates none."""
    fast = resnet_fast.resnet18(num_classes=10)
    before = _state(fast)
    with pytest.raises(ValueError):
        fast(torch.randn(1, 3, 32, 32))
    assert _unchanged(before, fast)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.conv_bn_stats(torch.randn(2, 4, 5, 5), None, None, None, False, torch.randn(6, 3, 3, 3),
                               [1, 1], [1, 1], [1, 1], 1), "channels"),
    (lambda: ops.conv_bn_stats(torch.randn(2, 4, 5, 5), None, torch.ones(3), torch.zeros(3), True,
                               torch.randn(6, 4, 3, 3), [1, 1], [1, 1], [1, 1], 1), "in_scale"),
    (lambda: ops.conv_bn_stats(torch.randn(2, 4, 5, 5).half(), None, None, None, False, torch.randn(6, 4, 3, 3),
                               [1, 1], [1, 1], [1, 1], 1), "dtype"),
    (lambda: ops.bn_act(torch.randn(2, 4, 5), None, torch.ones(4), torch.zeros(4), None, None, None, None, True),
     "4-D"),
    (lambda: ops.bn_act(torch.randn(2, 4, 5, 5), None, torch.ones(4), torch.zeros(4), torch.randn(2, 4, 5, 4),
                        None, None, None, True), "residual"),
    (lambda: ops.bn_act(torch.randn(2, 4, 5, 5), None, torch.ones(4), torch.zeros(4), torch.randn(2, 4, 5, 5),
                        None, torch.ones(4), None, True), "res_scale"),
    (lambda: ops.conv_bias_act(torch.randn(2, 4, 5, 5), torch.randn(6, 4, 1, 1), torch.zeros(5), None, True,
                               [1, 1], [0, 0], [1, 1], 1), "bias"),
    (lambda: ops.update_running_stats(torch.zeros(4), torch.ones(4), None, torch.zeros(4), torch.ones(4), 10, None),
     "num_batches_tracked"),
    (lambda: ops.update_running_stats(torch.zeros(4), torch.ones(4), torch.tensor(0), torch.zeros(4),
                                      torch.ones(4), 1, 0.1), "more than 1"),
])
def test_op_level_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
