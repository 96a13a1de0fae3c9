"""What the tests share: the comparison rule (a fused result is held to at most 2x eager's own error
against float64, plus a small absolute tolerance, and a failure says where and by how much), devices,
and switching backends through the public resnet_fast.use_backend."""

import contextlib
import copy
from typing import Iterator, Optional

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast
from resnet_fast.conventions import stat_dtype

# Absolute slack added to 2x eager's error, relative to the float64 reference's largest magnitude.
REL_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}


TRIM = 1e-3


def _trimmed_l2(t: torch.Tensor) -> float:
    sq = t.reshape(-1).square()
    drop = int(sq.numel() * TRIM)
    if drop:  # zero the `drop` largest terms (topk: a full sort of 100M-element gradient groups took seconds)
        sq = sq.clone()
        sq[sq.topk(drop, sorted=False).indices] = 0
    return sq.sum().sqrt().item()


def _describe(diff: torch.Tensor) -> str:
    flat = diff.reshape(-1)
    i = int(flat.argmax())
    idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), diff.shape)) if diff.dim() else ()
    return f"max {flat[i].item():.3e} at {idx}"


def assert_close_to_ref(name: str, fast: torch.Tensor, eager: Optional[torch.Tensor], ref: torch.Tensor,
                        dtype: Optional[torch.dtype] = None, factor: float = 2.0, norm: str = "max") -> None:
    """err(fast) <= factor * err(eager) + atol, err = the max-abs (norm="max") or trimmed L2 (norm="l2")
    distance to the float64 reference; eager None means atol alone. atol is REL_ATOL[dtype] times
    the reference's size (max-abs or L2, at least 1).

    Trimmed L2 leaves out the largest TRIM fraction of element errors: where a value lies within
    rounding of a ReLU's or max-pool's decision boundary, float32 takes the other branch in one run
    and not another, moving a few gradient elements by O(1) in eager and fused alike, at random.
    Everything else, and every tensor in float64, is compared in full."""
    dtype = dtype or fast.dtype
    assert fast.shape == ref.shape, f"{name}: shape {tuple(fast.shape)} != reference {tuple(ref.shape)}"
    f = fast.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    bad = ~torch.isfinite(f)
    assert not bad.any() or torch.equal(bad, ~torch.isfinite(r)), f"{name}: {int(bad.sum())} non-finite values"
    if not r.numel():
        return
    size = (lambda t: t.abs().max().item()) if norm == "max" else _trimmed_l2
    atol = REL_ATOL[dtype] * max(1.0, size(r))
    diff = (f - r).abs()
    eager_err = size(eager.detach().to(torch.float64).cpu() - r) if eager is not None else 0.0
    limit = factor * eager_err + atol
    if size(diff) > limit:
        raise AssertionError(f"{name}: fused {norm} error {size(diff):.3e} ({_describe(diff)}) exceeds "
                             f"{factor} x eager error {eager_err:.3e} + atol {atol:.3e}")


# ---------------------------------------------------------------------------------------------
# Devices and backends

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def gpu_only(test):
    """A test that only has a CUDA form: marked gpu (so `-m gpu` selects it) and skipped without CUDA."""
    return pytest.mark.gpu(needs_cuda(test))


# One test body with a device argument; the cuda instance carries the gpu mark (extension-cpp's style).
cpu_and_cuda = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda])]


@contextlib.contextmanager
def force_backend(name: str, device: str) -> Iterator[str]:
    """Backend `name` serves `device` inside the block, through the public resnet_fast.use_backend.

    Where it cannot serve the device the test is skipped with the reason, except the Triton interpreter
    on a machine without CUDA: tests/conftest.py sets TRITON_INTERPRET=1 there, so it must work (fail).
    On a CUDA machine the interpreter is off (it is read once, when triton is imported, and would turn
    every GPU kernel into an interpreted one): the cpu x triton cases skip; run them in their own
    invocation, `TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= pytest tests/`."""
    try:
        switch = resnet_fast.use_backend(name, [device])
        switch.__enter__()
    except RuntimeError as e:
        if name == "triton" and device == "cpu" and not CUDA:
            pytest.fail(f"the Triton interpreter should serve cpu on a machine without CUDA: {e}")
        pytest.skip(str(e))
    try:
        yield name
    finally:
        switch.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# Op inputs: fresh random tensors (never zeros: zeros hide unwritten outputs), odd sizes.

CL = torch.channels_last
FORMATS = [torch.contiguous_format, CL]


def act(shape, device, dtype=torch.float32, fmt=torch.contiguous_format, offset=0.0):
    return (torch.randn(shape, device=device, dtype=dtype) + offset).contiguous(memory_format=fmt)


def vec(c, device, dtype=torch.float32, low=0.5, high=1.5):
    return torch.empty(c, device=device, dtype=dtype).uniform_(low, high)


# Odd sizes exercise masks and remainders; (N, Cin, H, W, Cout, kernel, stride, pad, dil, groups).
CONVS = [
    (2, 3, 13, 11, 8, 7, 2, 3, 1, 1),   # the stem: 3 input channels, 7x7, stride 2
    (3, 6, 9, 7, 10, 3, 1, 1, 1, 1),
    (2, 8, 9, 9, 12, 3, 2, 1, 1, 4),    # ResNeXt groups, stride 2
    (2, 5, 10, 9, 7, 3, 1, 2, 2, 1),    # dilation
    (1, 12, 5, 6, 20, 1, 1, 0, 1, 1),   # 1x1
    (2, 12, 7, 7, 9, 1, 2, 0, 1, 1),    # 1x1 stride 2 (downsample)
]


def conv_args(case, device, dtype, fmt, prologue):
    n, cin, h, w, cout, k, s, p, d, g = case
    x = act((n, cin, h, w), device, dtype, fmt)
    weight = (torch.randn(cout, cin // g, k, k, device=device, dtype=dtype) * 0.3).contiguous(memory_format=fmt)
    pro = (vec(cin, device, stat_dtype(dtype), -0.5, 0.5), vec(cin, device, stat_dtype(dtype)),
           vec(cin, device, stat_dtype(dtype), -0.5, 0.5)) if prologue else (None, None, None)
    return x, pro, weight, [s, s], [p, p], [d, d], g


def bn_act_args(shape, device, dtype, fmt, with_mean, residual, requires_grad=False):
    c = shape[1]
    sdt = stat_dtype(dtype)
    x = act(shape, device, dtype, fmt, offset=2.0)
    mean = vec(c, device, sdt, 1.5, 2.5) if with_mean else None
    args = [x, mean, vec(c, device, sdt, -1.5, 1.5), vec(c, device, sdt, -0.5, 0.5)]
    if residual == "none":
        args += [None, None, None, None]
    elif residual == "plain":
        args += [act(shape, device, dtype, fmt), None, None, None]
    else:
        args += [act(shape, device, dtype, fmt, offset=-1.0), vec(c, device, sdt, -1.5, -0.5), vec(c, device, sdt),
                 vec(c, device, sdt, -0.5, 0.5)]
    if requires_grad:
        args = [a.requires_grad_(True) if a is not None else None for a in args]
    return args


# ---------------------------------------------------------------------------------------------
# Models: one triplet builder, one step recorder, the two model-level comparison rules.

# resnet_fast's torchvision builders.
BUILDERS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def model_triplet(arch: str, device="cpu", dtype=torch.float32, convert=False, **kwargs):
    """(eager torchvision in dtype and resnet_fast's activation layout, resnet_fast in dtype,
    torchvision in float64), all three holding the same state. resnet_fast is built by its own builder
    and loads torchvision's state_dict, or with convert=True comes from resnet_fast.from_torchvision."""
    tv = getattr(torchvision.models, arch)(**kwargs).to(device)
    if convert:
        fast = resnet_fast.from_torchvision(copy.deepcopy(tv))
    else:
        fast = getattr(resnet_fast, arch)(**kwargs).to(device)
        fast.load_state_dict(tv.state_dict())
    ref = copy.deepcopy(tv).double()
    return tv.to(dtype).to(memory_format=fast.memory_format), fast.to(dtype), ref


def record_steps(model, x, target, steps: int = 1, lr: Optional[float] = 0.01, autocast_dtype=None,
                 train: bool = True, eval_after: bool = True) -> dict:
    """Runs `steps` forward / backward passes (each followed by an SGD step with momentum unless lr is
    None) and records per step the output, loss, input gradient and parameter gradients, then the
    buffers, the parameters (when they were updated) and (eval_after) an eval-mode forward. Under autocast the
    loss is taken in float32, as eager autocast code does."""
    model.train(train)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if lr is not None else None
    cast = dict(device_type=x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    rec = {}
    for step in range(steps):
        xi = x.clone().requires_grad_(True)
        with torch.autocast(**cast):
            out = model(xi)
            loss = F.cross_entropy(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, target)
        if opt is not None:
            opt.zero_grad()
        loss.backward()
        rec[f"step{step}.out"] = out.detach()
        rec[f"step{step}.loss"] = loss.detach()
        rec[f"step{step}.input_grad"] = xi.grad
        for name, p in model.named_parameters():
            if p.grad is not None:
                rec[f"step{step}.grad.{name}"] = p.grad.clone()
        if opt is not None:
            opt.step()
    for name, b in model.named_buffers():
        rec[f"buffer.{name}"] = b.clone()
    if opt is not None:
        for name, p in model.named_parameters():
            rec[f"param.{name}"] = p.detach().clone()
    if eval_after:
        model.eval()
        with torch.no_grad(), torch.autocast(**cast):
            rec["eval.out"] = model(x)
    return rec


def assert_float64_exact(name: str, r_fast: dict, r_ref: dict, rel: float = 1e-9) -> None:
    """float64: every recorded tensor within `rel` of its magnitude (max-abs); counters exactly."""
    assert r_fast.keys() == r_ref.keys(), f"{name}: recorded {sorted(set(r_fast) ^ set(r_ref))} on one side only"
    for key, ref in r_ref.items():
        fast = r_fast[key]
        assert fast.shape == ref.shape and fast.dtype == ref.dtype, \
            f"{name}: {key}: {fast.dtype} {tuple(fast.shape)} vs {ref.dtype} {tuple(ref.shape)}"
        err = (fast.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
        assert err <= rel * scale, f"{name}: {key}: max error {err:.3e} > {rel:g} x {scale:.3e}"


def _group(key: str) -> str:
    """float32 comparison groups: per step the output, the loss, the input gradient and all parameter
    gradients together; after training all parameters together, all buffers of one kind together."""
    if ".grad." in key:
        return key.split(".grad.")[0] + ".grads"
    if key.startswith(("buffer.", "param.")):
        return key.split(".", 1)[0] + "s." + key.rsplit(".", 1)[-1]
    return key


def assert_steps_close(name: str, r_fast: dict, r_eager: dict, r_ref: dict, dtype=torch.float32,
                       grouped: bool = True) -> None:
    """Low precision: the trimmed-L2 distance to float64 <= 2x eager's + atol (the loss: max-abs);
    num_batches_tracked exactly. grouped=True compares per group (_group) rather than per tensor.

    Groups and L2 rather than per-tensor max-abs: an activation within rounding of 0 takes the other
    side of a ReLU in one float32 run and not in another, which moves that element's gradient by
    O(1) and then every gradient upstream of it; such flips hit eager and resnet_fast alike, at
    random. Per-tensor exactness is what the float64 comparison checks."""
    assert r_fast.keys() == r_ref.keys()
    groups = {}
    for key in r_ref:
        if key.endswith("num_batches_tracked"):
            assert torch.equal(r_fast[key], r_ref[key].to(r_fast[key].dtype)), f"{name}: {key}"
        else:
            groups.setdefault(_group(key) if grouped else key, []).append(key)
    for group, keys in groups.items():
        fast, eager, ref = (torch.cat([r[k].double().reshape(-1) for k in keys]) for r in (r_fast, r_eager, r_ref))
        norm = "max" if group.endswith(".loss") and not grouped else "l2"
        assert_close_to_ref(f"{name}:{group}", fast, eager, ref, dtype=dtype, norm=norm)
