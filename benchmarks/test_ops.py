"""Op-level benchmarks: each fused op against the eager PyTorch sequence it replaces, forward and
backward, on resnet50 layer shapes (batch 256 bf16 on a GPU, batch 8 float32 on CPU).

On a GPU each op is also timed per implementation behind it (VARIANTS below): the native CUDA C++
kernels, and for the convolutions the Triton GEMM and cuDNN forced, so the results say which to keep.

    op             fused (torch.ops.resnet_fast)                 eager sequence it replaces
    conv_bn_stats  conv(relu((x - m)*s + b)) + channel mean/var  batch_norm(given stats), relu, conv2d, var_mean
    bn_act         relu(bn(y) + bn(yd)), the block end           batch_norm(y) + batch_norm(yd), relu
    conv_bias_act  relu(conv(x, W') + b' + residual), eval       conv2d(x, W', b') + residual, relu

extra_info: TFLOP/s (convolutions) and GB/s, next to the device's measured matmul rate and copy
bandwidth (harness.device_limits), and roofline_fraction = max(flops / matmul rate, bytes / copy
bandwidth) / time, where 1.0 is the hardware limit. Bytes are the fused op's minimal traffic (every
input read once, every output written once) for both implementations: for eager they are an
effective figure, so the two GB/s values compare like the two times do. The fraction can pass 100%
where an op's data stays in a cache larger than the copy benchmark's reach (CPUs with big L3s).
"""

import itertools
from typing import Callable, Dict, NamedTuple, Tuple

import pytest
import torch
import torch.nn.functional as F

import harness
from harness import DEVICE, DTYPE, OP_BATCH
import resnet_fast
from resnet_fast import ops

EPS = 1e-5
N = OP_BATCH


class Spec(NamedTuple):
    make: Callable[[], Dict[str, torch.Tensor]]   # one fresh input set
    run: Callable[[Dict[str, torch.Tensor]], tuple]  # forward: the outputs backward differentiates
    wrt: Tuple[str, ...]                          # inputs that receive gradients
    set_bytes: int
    flops: Tuple[float, float]                    # forward, backward (0: not a conv)
    bytes: Tuple[float, float]
    shape: str


def act(c: int, hw: int) -> torch.Tensor:
    return torch.randn(N, c, hw, hw, device=DEVICE, dtype=DTYPE).contiguous(memory_format=torch.channels_last)


def vec(c: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    return torch.empty(c, device=DEVICE, dtype=torch.float32).uniform_(low, high)


def weight(cout: int, cin: int, k: int) -> torch.Tensor:
    w = torch.randn(cout, cin, k, k, device=DEVICE, dtype=DTYPE) / (cin * k * k) ** 0.5
    return w.contiguous(memory_format=torch.channels_last)


def conv_bn_stats(cin, cout, hw, k, stride, impl) -> Spec:
    pad, out_hw = k // 2, (hw + 2 * (k // 2) - k) // stride + 1

    def make():
        var = vec(cin, 0.5, 2.0)
        gamma = vec(cin, 0.5, 1.5)
        return dict(x=act(cin, hw), mean=vec(cin), var=var, gamma=gamma, scale=gamma / torch.sqrt(var + EPS),
                    beta=vec(cin), w=weight(cout, cin, k))

    def fused(t):
        y, mean, var = ops.conv_bn_stats(t["x"], t["mean"], t["scale"], t["beta"], True, t["w"], [stride] * 2,
                                         [pad] * 2, [1, 1], 1)
        return y, mean, var

    def eager(t):
        a = F.relu(F.batch_norm(t["x"], t["mean"], t["var"], t["gamma"], t["beta"], False, 0.0, EPS))
        y = F.conv2d(a, t["w"], None, stride, pad)
        var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
        return y, mean, var

    x_b, w_b = N * cin * hw * hw * DTYPE.itemsize, cout * cin * k * k * DTYPE.itemsize
    y_b = N * cout * out_hw * out_hw * DTYPE.itemsize
    flops = 2.0 * N * out_hw * out_hw * cout * cin * k * k
    wrt = ("x", "scale", "beta", "w") if impl != "eager" else ("x", "gamma", "beta", "w")
    return Spec(make, fused if impl != "eager" else eager, wrt, x_b + w_b, (flops, 2 * flops),
                (x_b + w_b + y_b, 2 * (x_b + w_b + y_b)), f"x {N}x{cin}x{hw}x{hw}, W {cout}x{cin}x{k}x{k}, s{stride}")


def bn_act(c, hw, impl) -> Spec:
    def make():
        t = dict(y=act(c, hw), yd=act(c, hw))
        for p in ("", "d"):
            t["mean" + p], t["var" + p], t["gamma" + p], t["beta" + p] = vec(c), vec(c, 0.5, 2), vec(c, .5, 1.5), vec(c)
            t["scale" + p] = t["gamma" + p] / torch.sqrt(t["var" + p] + EPS)
        return t

    def fused(t):
        return (ops.bn_act(t["y"], t["mean"], t["scale"], t["beta"], t["yd"], t["meand"], t["scaled"], t["betad"],
                           True),)

    def eager(t):
        main = F.batch_norm(t["y"], t["mean"], t["var"], t["gamma"], t["beta"], False, 0.0, EPS)
        short = F.batch_norm(t["yd"], t["meand"], t["vard"], t["gammad"], t["betad"], False, 0.0, EPS)
        return (F.relu(main + short),)

    a_b = N * c * hw * hw * DTYPE.itemsize
    scale = ("scale", "scaled") if impl != "eager" else ("gamma", "gammad")
    wrt = ("y", scale[0], "beta", "yd", scale[1], "betad")
    return Spec(make, fused if impl != "eager" else eager, wrt, 2 * a_b, (0.0, 0.0), (3 * a_b, 6 * a_b),
                f"2 x {N}x{c}x{hw}x{hw}, dual BN + residual + ReLU")


def conv_bias_act(cin, cout, hw, impl) -> Spec:
    def make():
        return dict(x=act(cin, hw), w=weight(cout, cin, 1), b=vec(cout).to(DTYPE), res=act(cout, hw))

    def fused(t):
        return (ops.conv_bias_act(t["x"], t["w"], t["b"], t["res"], True, [1, 1], [0, 0], [1, 1], 1),)

    def eager(t):
        return (F.relu(F.conv2d(t["x"], t["w"], t["b"]) + t["res"]),)

    x_b, w_b, o_b = (N * cin * hw * hw * DTYPE.itemsize, cout * cin * DTYPE.itemsize,
                     N * cout * hw * hw * DTYPE.itemsize)
    flops = 2.0 * N * hw * hw * cout * cin
    return Spec(make, fused if impl != "eager" else eager, ("x", "w", "b", "res"), x_b + w_b + o_b,
                (flops, 2 * flops), (x_b + w_b + 2 * o_b, 2 * x_b + 2 * w_b + 3 * o_b),
                f"x {N}x{cin}x{hw}x{hw}, W {cout}x{cin}x1x1, + residual + ReLU")


# resnet50 layers: (op, layer, builder)
LAYERS = [
    ("conv_bn_stats", "layer1.conv2 3x3", lambda impl: conv_bn_stats(64, 64, 56, 3, 1, impl)),
    ("conv_bn_stats", "layer3.conv1 1x1", lambda impl: conv_bn_stats(1024, 256, 14, 1, 1, impl)),
    ("bn_act", "layer1 block end", lambda impl: bn_act(256, 56, impl)),
    ("conv_bias_act", "layer1.conv3 1x1 (eval)", lambda impl: conv_bias_act(64, 256, 56, impl)),
]
# On a GPU, the alternatives behind each op too, so the measurements decide between them (issue: one
# GPU implementation per op, Triton or CUDA C++, whichever is faster; Triton GEMM or cuDNN per shape):
# impl -> (backend, RESNET_FAST_CONV). "resnet_fast" is the default choice (per-shape tuning).
VARIANTS = {"resnet_fast": None, "resnet_fast_native": ("native", "auto"),
            "resnet_fast_triton_gemm": ("triton", "triton"), "resnet_fast_cudnn_gemm": ("triton", "aten")}


def _impls(op):
    if DEVICE.type != "cuda":
        return ("eager", "resnet_fast")
    conv = ("resnet_fast_triton_gemm", "resnet_fast_cudnn_gemm") if op.startswith("conv") else ()
    return ("eager", "resnet_fast", "resnet_fast_native", *conv)


CASES = [pytest.param(op, layer, build, direction, impl, id=f"{op}-{layer.split()[0]}-{direction}-{impl}")
         for op, layer, build in LAYERS for direction in ("forward", "backward") for impl in _impls(op)]


@pytest.fixture
def implementation(monkeypatch, impl):
    """The backend (through the public switch) and conv strategy behind an impl name."""
    variant = VARIANTS.get(impl)
    if variant is None:
        yield impl
        return
    monkeypatch.setenv("RESNET_FAST_CONV", variant[1])
    with resnet_fast.use_backend(variant[0], [DEVICE.type]):
        yield impl


@pytest.mark.parametrize("op,layer,build,direction,impl", CASES)
def test_op(benchmark, implementation, op, layer, build, direction, impl):
    spec = build(impl)
    sets = [spec.make() for _ in range(harness.rotation(spec.set_bytes))]
    if direction == "forward":
        inputs = itertools.cycle(sets)

        def fn():
            with torch.no_grad():
                return spec.run(next(inputs))
    else:
        graphs = []
        for t in sets:  # one recorded forward per input set; backward replays it (retain_graph)
            for name in spec.wrt:
                t[name].requires_grad_(True)
            outs = spec.run(t)
            graphs.append((outs, [t[name] for name in spec.wrt], [torch.randn_like(o) for o in outs]))
        recorded = itertools.cycle(graphs)

        def fn():
            outs, wrt, grads = next(recorded)
            return torch.autograd.grad(outs, wrt, grads, retain_graph=True)

    median = harness.timed(benchmark, fn, rounds=harness.OP_ROUNDS)
    d = 0 if direction == "forward" else 1
    flops, traffic = spec.flops[d], spec.bytes[d]
    limits = harness.device_limits()
    info = benchmark.extra_info
    info.update(harness.environment())
    info.update(op=op, layer=layer, direction=direction, impl=impl, shape=spec.shape, dtype=str(DTYPE),
                rotated_input_sets=len(sets), flops=flops, bytes=traffic, GBps=traffic / median / 1e9,
                TFLOPs=flops / median / 1e12 if flops else None, device_copy_GBps=limits["copy_GBps"],
                device_matmul_TFLOPs=limits["matmul_TFLOPs"],
                roofline_fraction=max(flops / (limits["matmul_TFLOPs"] * 1e12),
                                      traffic / (limits["copy_GBps"] * 1e9)) / median)
    harness.compare(benchmark, (op, layer, direction), impl, median, baselines=("eager",))
