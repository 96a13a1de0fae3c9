"""Model-level throughput: resnet_fast against torchvision eager and its peers, same weights, same data,
same dtype (channels_last model and input unless the implementation says otherwise).

    pytest benchmarks/ --benchmark-only [--benchmark-json out.json]      # RESNET_FAST_BENCH=quick|full

GPU: bfloat16 autocast, 224x224, batch 64/128/256 (quick: 256), cudnn.benchmark on for everyone.
CPU: float32, inference batch 1 and 8 at 224x224, training step batch 4 at 160x160.
Implementations:
  torchvision             eager torchvision, channels_last model and input;
  torchvision_nchw        eager torchvision as it comes: NCHW model and input (CPU inference);
  compile                 torch.compile(torchvision model), default mode;
  resnet_fast             resnet_fast.from_torchvision(model): model.eval() / training as a user runs it;
  resnet_fast_optimized   resnet_fast.optimize_for_inference(model, dtype, cuda_graph=True) (inference; on CPU
                          float32 its trunk compiled per input shape by oneDNN Graph);
  resnet_fast_per_conv    CPU only: optimize_for_inference(model, onednn_graph=False), one oneDNN conv call per layer;
  onnxruntime             the torchvision model exported with torch.onnx.export, run by ONNX Runtime's CPU
                          execution provider (graph optimizations on, torch's thread count; NCHW input);
                          only when onnxruntime is installed (pip install ".[bench]").
A training step is forward, cross-entropy, backward and an SGD (momentum) step on synthetic data.

Alternation (CPU): at a case's first test every implementation selected for it (after -k) is built
and warmed up, then MODEL_ROUNDS rounds run in which each implementation runs once, in turn, after a
short pause (SETTLE_S, untimed: ONNX Runtime's spinning threads must not slow the next one); each
test reports its implementation's median over those rounds, and speedup_vs_<other> is the ratio of
two medians taken in the same minutes of a shared, noisy machine (pytest-benchmark's own stats for
the entry are one further timed call). On a GPU each implementation is timed in its own test.
extra_info: images/s, speedup over every other implementation (CPU) or over torchvision and
torch.compile (GPU), peak device memory and its ratio to torchvision's, the logits' dtype, the
1-minute load average when the test started and ended, device, versions, date.
"""

import contextlib
import gc
import importlib.util
import itertools
import os
import statistics
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F
import torchvision

import harness
import resnet_fast
from harness import CUDA, DEVICE, DTYPE

HAVE_ORT = not CUDA and all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
INFER_IMPLS = ([] if CUDA else ["torchvision_nchw"]) + ["torchvision", "compile", "resnet_fast", "resnet_fast_optimized"] \
    + ([] if CUDA else ["resnet_fast_per_conv"]) + (["onnxruntime"] if HAVE_ORT else [])
TRAIN_IMPLS = ["torchvision", "compile", "resnet_fast"]
INFER_SHAPES = harness.INFER_SHAPES if CUDA else [(1, 224), (8, 224)]


def _cases(shapes, impls):
    # The implementation varies fastest and the baselines come first, so their medians exist when
    # the others report speedups.
    return [pytest.param(arch, batch, size, impl, id=f"{arch}-b{batch}-{size}px-{impl}")
            for arch in harness.MODELS for batch, size in shapes for impl in impls]


def memory_format(impl: str) -> torch.memory_format:
    return torch.contiguous_format if impl in ("torchvision_nchw", "onnxruntime") else torch.channels_last


def build(arch: str, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialized on the device: same weights for every implementation
        model = getattr(torchvision.models, arch)()
    model = model.to(memory_format=memory_format(impl))
    return resnet_fast.from_torchvision(model) if impl.startswith("resnet_fast") else model


def autocast(enabled: bool = True):
    if CUDA and enabled:
        return torch.autocast("cuda", dtype=DTYPE)
    return contextlib.nullcontext()


def images(batch: int, size: int, fmt: torch.memory_format = torch.channels_last):
    """Input batches to rotate among (float32: autocast casts inside, as in training)."""
    count = harness.rotation(batch * 3 * size * size * 4, most=4)
    torch.manual_seed(1)
    return [torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=fmt) for _ in range(count)]


def onnxruntime_step(arch: str, batch: int, size: int):
    """torchvision's model exported to ONNX (static shape), run by ONNX Runtime on numpy views of the inputs."""
    import onnxruntime as ort

    model = build(arch, "onnxruntime").eval()
    xs = images(batch, size, torch.contiguous_format)
    path = os.path.join(tempfile.mkdtemp(prefix="resnet_fast_onnx_"), f"{arch}-b{batch}.onnx")
    try:
        torch.onnx.export(model, (xs[0],), path, input_names=["x"], output_names=["logits"], dynamo=True)
    except ImportError:  # the dynamo exporter needs onnxscript; the TorchScript one does not
        torch.onnx.export(model, (xs[0],), path, input_names=["x"], output_names=["logits"], dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feeds = itertools.cycle([{"x": x.numpy()} for x in xs])

    def step():
        return torch.from_numpy(session.run(None, next(feeds))[0])
    return step


def inference_step(arch: str, batch: int, size: int, impl: str):
    if impl == "onnxruntime":
        return onnxruntime_step(arch, batch, size)
    model = build(arch, impl).eval()
    if impl == "resnet_fast_optimized":
        run = resnet_fast.optimize_for_inference(model, dtype=DTYPE, cuda_graph=True)
    elif impl == "resnet_fast_per_conv":
        run = resnet_fast.optimize_for_inference(model, dtype=DTYPE, onednn_graph=False)
    elif impl == "compile":
        torch._dynamo.reset()  # a fresh cache: no recompile limit carried over from earlier cases
        run = torch.compile(model)
    else:
        run = model
    batches = itertools.cycle(images(batch, size, memory_format(impl)))

    def step():
        with torch.inference_mode(), autocast(impl not in ("resnet_fast_optimized", "resnet_fast_per_conv")):
            return run(next(batches))
    return step


def train_step(arch: str, batch: int, size: int, impl: str):
    model = build(arch, impl).train()
    if impl == "compile":
        torch._dynamo.reset()
    run = torch.compile(model) if impl == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(2)
    targets = [torch.randint(0, 1000, (batch,), device=DEVICE) for _ in range(4)]
    data = itertools.cycle(list(zip(images(batch, size, memory_format(impl)), targets)))

    def step():
        x, target = next(data)
        with autocast():
            logits = run(x)
            loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logits
    return step


# A pause before each alternated call: ONNX Runtime's worker threads keep spinning for tens of ms after a
# run (measured: 30-50 ms of CPU time within 100 ms on 2 cores), which would slow whichever implementation
# runs next on a machine with as many cores as threads.
SETTLE_S = 0.15
_alternated = {}  # case -> (step per implementation, seconds per round per implementation); one case kept


def selected_impls(request, case: tuple) -> list:
    """The implementations whose tests of this case pytest will run (after -k / deselection), in order."""
    arch, mode, batch, size = case
    name = "test_inference" if mode == "inference" else "test_train_step"
    impls = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", None) == name and (params.get("arch"), params.get("batch"),
                                                             params.get("size")) == (arch, batch, size):
            impls.append(params["impl"])
    return impls


def alternated(request, case: tuple, rounds: int, warmup: int):
    """Builds and warms up every selected implementation of the case, then times `rounds` rounds in
    which each runs once, in turn (CPU; on a GPU each implementation is timed in its own test)."""
    if case not in _alternated:
        _alternated.clear()
        gc.collect()
        arch, mode, batch, size = case
        make = inference_step if mode == "inference" else train_step
        steps = {impl: make(arch, batch, size, impl) for impl in selected_impls(request, case)}
        for fn in steps.values():
            for _ in range(warmup):
                fn()
        times = {impl: [] for impl in steps}
        for _ in range(rounds):
            for impl, fn in steps.items():
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                fn()
                harness.sync()
                times[impl].append(time.perf_counter() - t0)
        _alternated[case] = (steps, times)
    return _alternated[case]


def run_case(benchmark, request, arch, mode, batch, size, impl, warmup):
    case = (arch, mode, batch, size)
    rounds = harness.MODEL_ROUNDS[mode]
    load = os.getloadavg()[0]
    info = benchmark.extra_info
    if CUDA:
        step = (inference_step if mode == "inference" else train_step)(arch, batch, size, impl)
        out_dtype = step().dtype
        harness.peak_memory_reset()
        median = harness.timed(benchmark, step, rounds=rounds, warmup=warmup, inner=1)
    else:
        steps, times = alternated(request, case, rounds, warmup)
        step = steps[impl]
        out_dtype = step().dtype
        # pytest-benchmark's own entry: one more call, timed; the medians reported are the alternated rounds'.
        benchmark.pedantic(step, rounds=1, iterations=1)
        median = statistics.median(times[impl])
        q = statistics.quantiles(times[impl], n=5, method="inclusive") if len(times[impl]) > 1 else [median] * 4
        info.update(median_s=median, p20_s=q[0], p80_s=q[3], alternated_rounds=len(times[impl]),
                    alternated_with=[i for i in times if i != impl])
        for other, ts in times.items():
            info[f"speedup_vs_{other}"] = statistics.median(ts) / median
    info.update(harness.environment())
    info.update(model=arch, mode=mode, batch=batch, image_size=size, impl=impl, dtype=str(DTYPE),
                memory_format="channels_last" if memory_format(impl) == torch.channels_last else "contiguous",
                output_dtype=str(out_dtype), images_per_s=batch / median,
                load_average_1min=[round(load, 2), round(os.getloadavg()[0], 2)])
    if HAVE_ORT:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    if CUDA:
        harness.compare(benchmark, case, impl, median, memory=harness.peak_memory())


@pytest.mark.parametrize("arch,batch,size,impl", _cases(INFER_SHAPES, INFER_IMPLS))
def test_inference(benchmark, request, arch, batch, size, impl):
    run_case(benchmark, request, arch, "inference", batch, size, impl, warmup=3)


@pytest.mark.parametrize("arch,batch,size,impl", _cases(harness.TRAIN_SHAPES, TRAIN_IMPLS))
def test_train_step(benchmark, request, arch, batch, size, impl):
    run_case(benchmark, request, arch, "train", batch, size, impl, warmup=2)
