"""What each GPU stage of scripts/gpu_check.sh runs, replayed on meta tensors for the sm_90 recorder
(scripts/sm90_compile.py; used by scripts/gpu_plan.py).

Shapes, dtypes and flags mirror the stages: smoke = scripts/gpu_smoke.py's resnet50 step per engine;
tests = the `-m gpu` tests (tests/ops: every conv case of the op tests, float32 / float64 / float16 /
bfloat16, prologue on and off, statistics and bias epilogues, both conv strategies, BN apply / backward
cases; tests/models: resnet18 / resnet50 steps and eval at 64x64 in three dtypes, the batch-32 224x224
autocast step, autocast at 32x32, CUDA-graph / compile / inference tests; the closed Triton backward's
engine tests); probe = scripts/gpu_probe.py's Triton engines on every resnet50 unit; bench = resnet50 at batch
256 (training step and eval) and the op benchmarks' layers. A change of those tests' shapes should
be mirrored here (the counts are estimates of the test stage, exact for smoke and bench).
"""

import contextlib
import itertools
import os

import torch
import torch.nn.functional as F

import resnet_fast
from resnet_fast import functional, ops

META = torch.device("meta")
CL = torch.channels_last
HALF = (torch.float16, torch.bfloat16)

# (N, Cin, H, W, Cout, kernel, stride, pad, dil, groups): the op tests' odd shapes.
CONVS = [(2, 3, 13, 11, 8, 7, 2, 3, 1, 1), (3, 6, 9, 7, 10, 3, 1, 1, 1, 1), (2, 8, 9, 9, 12, 3, 2, 1, 1, 4),
         (2, 5, 10, 9, 7, 3, 1, 2, 2, 1), (1, 12, 5, 6, 20, 1, 1, 0, 1, 1), (2, 12, 7, 7, 9, 1, 2, 0, 1, 1),
         (2, 6, 23, 17, 5, 3, 1, 1, 1, 1), (1, 20, 6, 5, 40, 1, 1, 0, 1, 1)]


@contextlib.contextmanager
def engine(name):
    old = os.environ.get("RESNET_FAST_CONV")
    os.environ["RESNET_FAST_CONV"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RESNET_FAST_CONV", None)
        else:
            os.environ["RESNET_FAST_CONV"] = old


@contextlib.contextmanager
def autocast(dtype):
    """torch.autocast(cuda, dtype) as resnet_fast.functional sees it, for meta tensors."""
    old = functional.autocast_dtype
    functional.autocast_dtype = lambda t: dtype if dtype is not None and t.dtype == torch.float32 else None
    try:
        yield
    finally:
        functional.autocast_dtype = old


def t(*shape, dtype=torch.float32, grad=False, fmt=CL):
    x = torch.empty(shape, device=META, dtype=dtype)
    x = x.contiguous(memory_format=fmt) if len(shape) == 4 else x
    return x.requires_grad_(grad)


def _backward(outs, leaves):
    outs = [o for o in outs if o is not None and o.requires_grad]
    torch.autograd.grad(outs, leaves, [torch.empty_like(o) for o in outs], allow_unused=True)


def conv_unit(case, dtype, prologue, train=True, bias_cases=True):
    n, cin, h, w, cout, k, s, p, d, g = case
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    x, wt = t(n, cin, h, w, dtype=dtype, grad=True), t(cout, cin // g, k, k, dtype=dtype, grad=True)
    pro = [t(cin, dtype=sdt, grad=True) for _ in range(3)] if prologue else [None, None, None]
    args = ([s, s], [p, p], [d, d], g)
    if train:
        y, mean, var = ops.conv_bn_stats(x, *pro, True, wt, *args)
        _backward([y, mean, var], [x, wt] + [v for v in pro if v is not None])
    for residual, relu in ((False, True), (True, True), (False, False)) if bias_cases else ():
        oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
        res = t(n, cout, oh, ow, dtype=dtype, grad=True) if residual else None
        out = ops.conv_bias_act(x, wt, t(cout, dtype=dtype, grad=True), res, relu, *args)
        if train:
            _backward([out], [x, wt])


def bn_cases(shape, dtype):
    c = shape[1]
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    for with_mean, residual, relu in itertools.product([False, True], ["none", "plain", "dual"], [False, True]):
        x = t(*shape, dtype=dtype, grad=True)
        vecs = [t(c, dtype=sdt, grad=True) if with_mean else None, t(c, dtype=sdt, grad=True),
                t(c, dtype=sdt, grad=True)]
        res = [None] * 4
        if residual != "none":
            res = [t(*shape, dtype=dtype, grad=True), None, None, None]
        if residual == "dual":
            res[1:] = [t(c, dtype=sdt, grad=True) if with_mean else None, t(c, dtype=sdt, grad=True),
                       t(c, dtype=sdt, grad=True)]
        out = ops.bn_act(x, *vecs, *res, relu)
        _backward([out], [x])


def model_step(arch, batch, size, dtype=torch.float32, amp=None, train=True, evaluate=True, num_classes=10):
    torch.manual_seed(0)
    with torch.device(META):
        model = resnet_fast.from_torchvision(getattr(__import__("torchvision").models, arch)(num_classes=num_classes))
    model = model.to(dtype).to(memory_format=CL)
    x = t(batch, 3, size, size, dtype=dtype)
    with autocast(amp):
        if train:
            model.train()
            out = model(x)
            F.cross_entropy(out.float(), torch.zeros(batch, dtype=torch.long, device=META)).backward()
        if evaluate:
            model.eval()
            with torch.no_grad():
                model(x)


def smoke():
    import gpu_smoke

    case = gpu_smoke.GPU_CASE
    for name in ("triton", "aten"):
        with engine(name):
            model_step(case["arch"], case["batch"], case["size"], amp=case["dtype"], num_classes=1000)


def tests():
    for strategy in ("triton", "aten"):
        with engine(strategy):
            for case, dtype, prologue in itertools.product(CONVS, (torch.float32, *HALF), (False, True)):
                conv_unit(case, dtype, prologue)
            for shape, dtype in itertools.product([(2, 10, 7, 5), (3, 10, 7, 5)], (torch.float32, torch.float16)):
                bn_cases(shape, dtype)
    for case, prologue in itertools.product(CONVS[:6], (False, True)):
        conv_unit(case, torch.float64, prologue)  # gradcheck / opcheck in float64 (BN kernels only)
    bn_cases((2, 5, 4, 3), torch.float64)
    closed_units([(2, 6, 7, 6, 9, 3, 2, 1, 1, 1), (2, 7, 5, 5, 17, 1, 1, 0, 1, 1), (2, 6, 7, 6, 9, 3, 1, 1, 1, 1)],
                 (torch.float32, *HALF))  # tests/triton_closed/test_closed_engine.py on the GPU
    closed_units([(2, 5, 6, 6, 7, 3, 1, 1, 1, 1)], (torch.float32,))
    with engine("triton"):
        for arch, dtype in itertools.product(("resnet18", "resnet50"), (torch.float32, *HALF)):
            model_step(arch, 4, 64, dtype)
        model_step("resnet50", 32, 224, amp=torch.bfloat16)
        model_step("resnet18", 32, 64, amp=torch.bfloat16, evaluate=False)
        model_step("resnet18", 8, 64, amp=torch.bfloat16)
        model_step("resnet18", 8, 64)
        for amp in HALF:
            model_step("resnet18", 4, 32, amp=amp)
        model_step("resnet50", 4, 64, amp=torch.bfloat16, train=False)


def closed_units(cases, dtypes):
    """conv units whose backward runs on the closed Triton engine (the "triton-closed" engine, forced)."""
    with resnet_fast.use_engine("conv_bn_stats_backward", "triton-closed"):
        for case, dtype in itertools.product(cases, dtypes):
            conv_unit(case, dtype, True, bias_cases=False)


def probe():
    """What scripts/gpu_probe.py launches in Triton: every resnet50 conv unit at batch 256 in float16 and
    bfloat16 on the Triton engines of each direction (triton-gemm and aten+triton forward; aten+triton and
    triton-closed backward: the closed backward's wgrad / dgrad kernels), called as the probe calls them."""
    import gpu_probe
    from resnet_fast import backends

    for shape, dtype in itertools.product(gpu_probe.unit_shapes(False), HALF):
        n, c, h, w, k, r, s, p, pro = shape
        sdt = torch.float32
        x, wt = t(n, c, h, w, dtype=dtype), t(k, c, r, r, dtype=dtype)
        vec = (t(c, dtype=sdt), t(c, dtype=sdt), t(c, dtype=sdt)) if pro else (None, None, None)
        conv = ([s, s], [p, p], [1, 1], 1)
        for name, fn in backends.engine_functions("triton", "conv_bn_stats").items():
            if name != "cudnn-fused":
                y, mean, _ = fn(x, *vec, True, wt, *conv)
        for name, fn in backends.engine_functions("triton", "conv_bn_stats_backward").items():
            if "cudnn" not in name:  # (closed-wgrad+cudnn-dgrad's Triton wgrad is triton-closed's kernel)
                fn(torch.empty_like(y), t(k, dtype=sdt), t(k, dtype=sdt), x, *vec, True, wt, y, mean, *conv,
                   [True, pro, pro, pro, True])


def bench():
    with engine(os.environ.get("RESNET_FAST_CONV", "aten")):
        model_step("resnet50", 256, 224, amp=torch.bfloat16, num_classes=1000)
    for strategy in ("triton", "aten"):
        with engine(strategy):
            for cin, cout, hw, k in ((64, 64, 56, 3), (1024, 256, 14, 1)):
                conv_unit((256, cin, hw, hw, cout, k, 1, k // 2, 1, 1), torch.bfloat16, True)
            bn_cases((256, 256, 56, 56), torch.bfloat16)


def candidates():
    """Every tuning candidate on resnet50-like bf16 / fp16 shapes (1x1 and 3x3, prologue + statistics,
    and the bias epilogue): what RESNET_FAST_CONV=auto compiles on a GPU. Not a window stage (the
    window never tunes), recorded so the dry run checks the candidates' registers and shared memory."""
    from sm90_compile import triton_module

    launch, tuning = triton_module("launch"), triton_module("tuning")
    for dtype, (cin, cout, k) in itertools.product(HALF, ((256, 512, 1), (128, 128, 3))):
        x, w = t(64, cin, 28, 28, dtype=dtype), t(cout, cin, k, k, dtype=dtype)
        pro = (t(cin), t(cin), t(cin), True)
        for cfg in tuning.candidates(cin, cout):
            launch.conv2d(x, w, [1, 1], [k // 2] * 2, [1, 1], 1, cfg, prologue=pro, stats=True)
            launch.conv2d(x, w, [1, 1], [k // 2] * 2, [1, 1], 1, cfg, bias=t(cout), relu=True)
