"""Every resnet_fast op against its plain-PyTorch reference, its gradients against finite
differences (float64 gradcheck), and torch.library.opcheck on each op's sample inputs."""

import itertools

import pytest
import torch

from resnet_fast import ops
from resnet_fast import reference as ref
from helpers import CL, CONVS, FORMATS, act, assert_close_to_ref, bn_act_args, conv_args, vec


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prologue", [False, True])
def test_conv_bn_stats_forward(case, fmt, prologue, device):
    x, pro, w, s, p, d, g = conv_args(case, device, torch.float32, fmt, prologue)
    y, mean, var = ops.conv_bn_stats(x, *pro, True, w, s, p, d, g)
    y64, mean64, var64 = ref.conv_bn_stats(x.double(), *[None if t is None else t.double() for t in pro], True,
                                           w.double(), s, p, d, g)
    y32, mean32, var32 = ref.conv_bn_stats(x, *pro, True, w, s, p, d, g)
    assert y.is_contiguous(memory_format=fmt)
    for name, a, b, c in (("y", y, y32, y64), ("mean", mean, mean32, mean64), ("var", var, var32, var64)):
        assert a.dtype == b.dtype
        assert_close_to_ref(name, a, b, c)


def test_channel_stats_large_mean(device):
    """|mean| = 1e4 * std: naive fp32 sum/sumsq would lose the variance entirely."""
    y = act((4, 5, 17, 19), device, offset=0.0) + 1e4
    mean, var = ops.conv_bn_stats(y, None, None, None, False, torch.eye(5, device=device).view(
        5, 5, 1, 1), [1, 1], [0, 0], [1, 1], 1)[1:]
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-3, atol=0)


BN_ACT_CASES = list(itertools.product([False, True], ["none", "plain", "dual"], [False, True]))


@pytest.mark.parametrize("with_mean,residual,relu", BN_ACT_CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bn_act_forward_backward(with_mean, residual, relu, fmt, device):
    shape = (3, 7, 5, 9)
    args = bn_act_args(shape, device, torch.float32, fmt, with_mean, residual, requires_grad=True)
    out = ops.bn_act(*args, relu)
    out32 = ref.bn_act(*args, relu=relu)
    args64 = [a.detach().double().requires_grad_(True) if a is not None else None for a in args]
    out64 = ref.bn_act(*args64, relu=relu)
    assert out.is_contiguous(memory_format=fmt)
    assert_close_to_ref("out", out, out32, out64)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [a for a in args if a is not None], g)
    grads32 = torch.autograd.grad(out32, [a for a in args if a is not None], g)
    grads64 = torch.autograd.grad(out64, [a for a in args64 if a is not None], g.double())
    for i, (a, b, c) in enumerate(zip(grads, grads32, grads64)):
        assert_close_to_ref(f"grad{i}", a, b, c)


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prologue", [False, True])
def test_conv_bn_stats_gradcheck(case, fmt, prologue, device):
    x, pro, w, s, p, d, g = conv_args(case, device, torch.float64, fmt, prologue)
    inputs = [t.requires_grad_(True) if t is not None else None for t in (x, *pro, w)]

    def fn(x_, m_, s_, b_, w_):
        y, mean, var = ops.conv_bn_stats(x_, m_, s_, b_, True, w_, s, p, d, g)
        return y, mean, var

    torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("with_mean,residual,relu", BN_ACT_CASES)
def test_bn_act_gradcheck(with_mean, residual, relu, device, backend):
    args = bn_act_args((2, 3, 4, 5), device, torch.float64, CL, with_mean, residual, requires_grad=True)
    # The interpreted Triton backend takes ~10 s per full gradcheck; fast mode (random projections)
    # checks the same Jacobian there.
    fast = backend == "triton" and device == "cpu"
    torch.autograd.gradcheck(lambda *a: ops.bn_act(*a, relu), args, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast)


def test_bn_finalize_gradcheck(device):
    var = vec(6, device, torch.float64).requires_grad_(True)
    weight = vec(6, device, torch.float64).requires_grad_(True)
    torch.autograd.gradcheck(lambda v, w: ops.bn_finalize(v, w, 1e-5), [var, weight])
    torch.autograd.gradcheck(lambda v: ops.bn_finalize(v, None, 1e-5), [var])


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (True, False)])
def test_conv_bias_act(case, fmt, residual, relu, device):
    x, _, w, s, p, d, g = conv_args(case, device, torch.float64, fmt, False)
    b = torch.randn(w.shape[0], device=device, dtype=torch.float64)
    y = ref.conv(x, w, None, s, p, d, g)
    r = act(y.shape, device, torch.float64, fmt) if residual else None
    inputs = [t.requires_grad_(True) for t in (x, w, b) + ((r,) if residual else ())]
    fn = (lambda x_, w_, b_, r_=None: ops.conv_bias_act(x_, w_, b_, r_, relu, s, p, d, g))
    out = fn(*inputs)
    torch.testing.assert_close(out, ref.conv_bias_act(x, w, b, r, relu, s, p, d, g), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=fmt)
    torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("residual,relu", [(False, False), (True, True)])
def test_conv_bias_act_float32_bias(residual, relu, device):
    """A folded BatchNorm shift kept in float32 for float16 activations (autocast eval) is added in
    float32 and rounded once: at least as close to float64 as rounding the shift to float16 first."""
    dt = torch.float16
    x, _, w, s, p, d, g = conv_args(CONVS[1], device, dt, CL, False)
    b = torch.randn(w.shape[0], device=device) * 30  # large shifts: where float16 rounding shows
    r = act(ref.conv(x, w, None, s, p, d, g).shape, device, dt, CL) if residual else None
    out = ops.conv_bias_act(x, w, b, r, relu, s, p, d, g)
    eager = ref.conv_bias_act(x, w, b.to(dt), r, relu, s, p, d, g)
    ref64 = ref.conv_bias_act(x.double(), w.double(), b.double(), None if r is None else r.double(), relu, s, p, d,
                              g)
    assert out.dtype == dt
    assert_close_to_ref("out", out, eager, ref64, dtype=dt, factor=1.0)


def _check_masked(name, got, want, mask):
    """Requested gradients equal the reference's (float64); the others are empty tensors."""
    assert len(got) == len(want) == len(mask)
    for i, (a, b, m) in enumerate(zip(got, want, mask)):
        if not m or b.numel() == 0:
            assert a.numel() == 0, f"{name}: gradient {i} was not requested (or has no input) but is {a.shape}"
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda e, i=i: f"{name} grad {i}: {e}")


MASKS8 = [[True] * 8, [True, False, False, True, False, False, True, False], [False, True, True, False, True, True,
                                                                               False, True]]


@pytest.mark.parametrize("mask", MASKS8)
def test_backward_ops_match_autograd_reference(mask, device):
    """The three backward ops, called directly with partial output masks, against reference.py's
    autograd-derived backward (float64)."""
    dt = torch.float64
    args = bn_act_args((2, 5, 4, 3), device, dt, CL, True, "dual")
    out = ops.bn_act(*args, True)
    g = torch.randn_like(out)
    _check_masked("bn_act_backward", ops.bn_act_backward(g, out, *args, True, mask),
                  ref.bn_act_backward(g, out, *args, True, mask), mask)
    x, pro, w, s, p, d, gr = conv_args(CONVS[1], device, dt, CL, True)
    y, mean, var = ops.conv_bn_stats(x, *pro, True, w, s, p, d, gr)
    grads = (torch.randn_like(y), torch.randn_like(mean), torch.randn_like(var))
    m5 = mask[:5]
    saved = (x, *pro, True, w, y, mean, s, p, d, gr, m5)
    _check_masked("conv_bn_stats_backward", ops.conv_bn_stats_backward(*grads, *saved),
                  ref.conv_bn_stats_backward(*grads, *saved), m5)
    b = torch.randn(w.shape[0], device=device, dtype=dt)
    r = act(y.shape, device, dt, CL)
    out = ops.conv_bias_act(x, w, b, r, True, s, p, d, gr)
    g = torch.randn_like(out)
    m4 = mask[4:]
    _check_masked("conv_bias_act_backward", ops.conv_bias_act_backward(g, out, x, w, b, r, True, s, p, d, gr, m4),
                  ref.conv_bias_act_backward(g, out, x, w, b, r, True, s, p, d, gr, m4), m4)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_update_running_stats_matches_batchnorm(momentum, device):
    bn = torch.nn.BatchNorm2d(5, momentum=momentum).to(device)
    rm, rv, nbt = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    for _ in range(3):
        x = act((3, 5, 4, 6), device, offset=1.0)
        bn(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        ops.update_running_stats(rm, rv, nbt, mean, var, 3 * 4 * 6, momentum)
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-6, atol=1e-7)
        assert torch.equal(nbt, bn.num_batches_tracked)


# ------------------------------------------------------------------------------------------
# opcheck: schema, fake kernel, autograd registration, dynamic shapes.

def _sample_calls(device, fmt, requires_grad):
    dt = torch.float32
    rg = requires_grad
    cout = CONVS[2][4]
    x, pro, weight, st, pa, di, gr = conv_args(CONVS[2], device, dt, fmt, True)
    leaf = (lambda t: t.requires_grad_(rg) if t is not None else None)
    x, weight = leaf(x), leaf(weight)
    pro = tuple(leaf(t) for t in pro)
    y, mean, var = (t.detach() for t in ops.conv_bn_stats(x, *pro, True, weight, st, pa, di, gr))
    yield ops.conv_bn_stats, (x, *pro, True, weight, st, pa, di, gr)
    yield ops.conv_bn_stats, (x, None, None, None, False, weight, st, pa, di, gr)
    yield ops.conv_bn_stats_backward, (torch.randn_like(y), torch.randn_like(mean), torch.randn_like(var), x.detach(),
                                       *[t.detach() for t in pro], True, weight.detach(), y, mean, st, pa, di, gr,
                                       [True, True, True, True, True])
    yield ops.conv_bn_stats_backward, (torch.randn_like(y), torch.randn_like(mean), torch.randn_like(var), x.detach(),
                                       None, None, None, False, weight.detach(), y, mean, st, pa, di, gr,
                                       [True, False, False, False, False])
    yield ops.bn_finalize, (leaf(vec(6, device)), leaf(vec(6, device)), 1e-5)
    yield ops.bn_finalize, (leaf(vec(6, device)), None, 1e-3)
    for with_mean, residual, relu in [(True, "dual", True), (False, "plain", True), (True, "none", False)]:
        args = bn_act_args((2, 6, 5, 3), device, dt, fmt, with_mean, residual, requires_grad=rg)
        yield ops.bn_act, (*args, relu)
        out = ops.bn_act(*args, relu).detach()
        mask = [a is not None for a in args]
        yield ops.bn_act_backward, (torch.randn_like(out), out, *[a.detach() if a is not None else None
                                                                  for a in args], relu, mask)
    b = leaf(torch.randn(cout, device=device))
    yo = ref.conv(x.detach(), weight.detach(), None, st, pa, di, gr)
    r = leaf(act(yo.shape, device, dt, fmt))
    yield ops.conv_bias_act, (x, weight, b, r, True, st, pa, di, gr)
    yield ops.conv_bias_act, (x, weight, None, None, False, st, pa, di, gr)
    out = ops.conv_bias_act(x, weight, b, r, True, st, pa, di, gr).detach()
    yield ops.conv_bias_act_backward, (torch.randn_like(out), out, x.detach(), weight.detach(), b.detach(), r.detach(),
                                       True, st, pa, di, gr, [True, True, True, True])
    rm, rv, nbt = torch.zeros(6, device=device), torch.ones(6, device=device), torch.tensor(0, device=device)
    yield ops.update_running_stats, (rm, rv, nbt, vec(6, device), vec(6, device), 30, 0.1)
    yield ops.update_running_stats, (rm, rv, nbt, vec(6, device), vec(6, device), 30, None)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(fmt, requires_grad, device, backend):
    if backend == "triton" and device == "cpu" and not (requires_grad and fmt is CL):
        pytest.skip("interpreted Triton: opcheck runs once, channels_last with autograd (~25 s)")
    seen = set()
    for op, args in _sample_calls(device, fmt, requires_grad):
        seen.add(op._name if hasattr(op, "_name") else str(op))
        torch.library.opcheck(op, args)
    assert len(seen) == len(ops.__all__)


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_bias_act_plain_eager_call_is_the_op(fmt, device):
    """The models' eval call (ops.conv_bias_act_call: the backend kernel without the op layer where nothing
    needs a gradient) gives the op's numbers bit for bit, and takes the op (with autograd) where one does."""
    x, _, w, s, p, d, g = conv_args(CONVS[1], device, torch.float32, fmt, False)
    b = vec(w.shape[0], device, low=-0.5, high=0.5)
    r = act(ops.conv_bias_act(x, w, b, None, False, s, p, d, g).shape, device, fmt=fmt)
    with torch.no_grad():
        assert torch.equal(ops.conv_bias_act_call(x, w, b, r, True, s, p, d, g),
                           ops.conv_bias_act(x, w, b, r, True, s, p, d, g))
    xg = x.clone().requires_grad_(True)
    out = ops.conv_bias_act_call(xg, w, b, r, True, s, p, d, g)
    assert out.grad_fn is not None
    assert torch.equal(out.detach(), ops.conv_bias_act(x, w, b, r, True, s, p, d, g))
