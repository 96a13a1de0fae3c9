"""torch.ops.resnet_fast.batch_stats + batch_norm_act (training BatchNorm + residual + ReLU written once) and
its backward against the plain-PyTorch reference F.batch_norm -> + residual -> relu: outputs, batch
statistics and the gradients of input, weight, bias and residual, per backend (tests/ops/conftest.py), in
both layouts; opcheck; and the errors bad input gets."""

import pytest
import torch
import torch.nn.functional as F

from resnet_fast import bn_ops
from helpers import CL, FORMATS, act, assert_close_to_ref, vec

EPS = 1e-5


def fused(x, weight, bias, residual, relu):
    mean, var = bn_ops.batch_stats(x)
    return bn_ops.batch_norm_act(x, mean, var, weight, bias, residual, EPS, relu), mean, var


def reference(x, weight, bias, residual, relu):
    out = F.batch_norm(x, None, None, weight, bias, True, 0.0, EPS)
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


def inputs(shape, device, fmt, affine, residual, offset=2.0):
    c = shape[1]
    x = act(shape, device, fmt=fmt, offset=offset)
    w = vec(c, device) if affine else None
    b = vec(c, device, low=-0.5, high=0.5) if affine else None
    r = act(shape, device, fmt=fmt) if residual else None
    return [t.requires_grad_(True) if t is not None else None for t in (x, w, b, r)]


# C = 20: one 8-wide vector block pair plus a 4-channel tail; C = 19, odd spatial sizes: the scalar tail only.
CASES = [((3, 20, 5, 7), True, True, True), ((2, 19, 3, 5), True, False, True), ((4, 8, 3, 3), False, True, False),
         ((2, 20, 4, 3), True, True, False), ((3, 16, 1, 1), False, False, True)]


@pytest.mark.parametrize("shape,affine,residual,relu", CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_backward_against_reference(shape, affine, residual, relu, fmt, device):
    args = inputs(shape, device, fmt, affine, residual)
    out, mean, var = fused(*args, relu)
    args64 = [t.detach().double().requires_grad_(True) if t is not None else None for t in args]
    out32, out64 = reference(*args, relu), reference(*args64, relu)
    assert out.is_contiguous(memory_format=fmt) and out.dtype == torch.float32
    assert not mean.requires_grad and not var.requires_grad
    assert_close_to_ref("out", out, out32, out64)
    x64 = args64[0].detach()
    var64, mean64 = torch.var_mean(x64, dim=(0, 2, 3), correction=0)
    var32, mean32 = torch.var_mean(args[0].detach(), dim=(0, 2, 3), correction=0)
    assert_close_to_ref("mean", mean, mean32, mean64)
    assert_close_to_ref("var", var, var32, var64)
    g = torch.randn_like(out)
    leaves = [t for t in args if t is not None]
    grads = torch.autograd.grad(out, leaves, g)
    grads32 = torch.autograd.grad(out32, leaves, g)
    grads64 = torch.autograd.grad(out64, [t for t in args64 if t is not None], g.double())
    names = [n for n, t in zip(("dx", "dweight", "dbias", "dresidual"), args) if t is not None]
    for name, a, b, c in zip(names, grads, grads32, grads64):
        assert a.dtype == b.dtype
        assert_close_to_ref(name, a, b, c)
    assert grads[0].is_contiguous(memory_format=fmt)


def test_large_mean_keeps_variance(device):
    """|mean| = 1e4 * std: a naive float32 sum / sum of squares would lose the variance."""
    x, w, b, _ = inputs((4, 12, 9, 7), device, CL, True, False, offset=1e4)
    out, mean, var = fused(x, w, b, None, True)
    var64, mean64 = torch.var_mean(x.detach().double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-3, atol=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)


def test_only_requested_gradients(device):
    x, w, b, r = inputs((2, 20, 3, 3), device, CL, True, True)
    w.requires_grad_(False)
    out, _, _ = fused(x, w, b, r.detach(), True)
    out.sum().backward()
    assert w.grad is None and x.grad is not None and b.grad is not None


@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck(fmt, device, backend):
    if backend == "triton" and device == "cpu" and fmt is not CL:
        pytest.skip("interpreted Triton: opcheck runs once, channels_last")
    x, w, b, r = inputs((2, 12, 3, 5), device, fmt, True, True)
    torch.library.opcheck(bn_ops.batch_stats, (x,))
    mean, var = bn_ops.batch_stats(x)
    torch.library.opcheck(bn_ops.batch_norm_act, (x, mean, var, w, b, r, EPS, True))
    out = bn_ops.batch_norm_act(x, mean, var, w, b, r, EPS, True)
    torch.library.opcheck(bn_ops.batch_norm_act_backward,
                          (torch.randn_like(out), out.detach(), x.detach(), w.detach(), mean, var, EPS, True,
                           [True, True, True, True]))


BAD = [
    (lambda d: (torch.randn(2, 4, 3, 3, device=d), torch.ones(5, device=d), None, None), "weight must have shape"),
    (lambda d: (torch.randn(2, 4, 3, 3, device=d), None, None, torch.randn(2, 4, 3, 2, device=d)),
     "residual has shape"),
    (lambda d: (torch.randn(1, 4, 1, 1, device=d), None, None, None), "more than 1 value per channel"),
    (lambda d: (torch.randn(2, 4, 3, device=d), None, None, None), "must be 4-D"),
    (lambda d: (torch.randint(0, 3, (2, 4, 3, 3), device=d), None, None, None), "floating-point"),
]


@pytest.mark.parametrize("make,message", BAD)
def test_bad_input_raises(make, message, device):
    with pytest.raises((RuntimeError, ValueError), match=message):
        fused(*make(device), True)


def test_bad_statistics_raise(device):
    x = torch.randn(2, 4, 3, 3, device=device)
    with pytest.raises(RuntimeError, match="mean must have shape"):
        bn_ops.batch_norm_act(x, torch.zeros(3, device=device), torch.ones(4, device=device), None, None, None, EPS,
                              True)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        bn_ops.batch_norm_act(x, torch.zeros(4, device=device), torch.ones(4, device=device), None, None, None, 0.0,
                              True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_eager_path_is_the_op(fmt, device):
    """The models' plain-eager call (bn_ops.*_call: the backend kernels without the torch.library layer) gives
    the op's numbers bit for bit, forward and backward, including a gradient in the other layout."""
    args = inputs((3, 20, 5, 7), device, fmt, True, True)
    other = torch.contiguous_format if fmt is CL else CL
    g = torch.randn(3, 20, 5, 7, device=device).contiguous(memory_format=other)
    results = []
    for stats, apply in ((bn_ops.batch_stats, bn_ops.batch_norm_act),
                         (bn_ops.batch_stats_call, bn_ops.batch_norm_act_call)):
        mean, var = stats(args[0].detach())
        out = apply(args[0], mean, var, *args[1:], EPS, True)
        results.append((out, mean, var, *torch.autograd.grad(out, args, g)))
    for a, b in zip(*results):
        assert torch.equal(a, b)
