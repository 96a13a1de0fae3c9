"""Model-level throughput: resnet_fast against torchvision eager (and torch.compile(torchvision) on a
GPU), same weights, same data, same dtype and memory format (channels_last model and input).

    pytest benchmarks/ --benchmark-only [--benchmark-json out.json]      # RESNET_FAST_BENCH=quick|full

GPU: bfloat16 autocast, 224x224, batch 64/128/256 (quick: 256), cudnn.benchmark on for everyone.
CPU: float32, inference batch 8 at 224x224, training step batch 4 at 160x160.
Implementations:
  torchvision             eager torchvision, the baseline every speedup divides by;
  compile                 torch.compile(torchvision model), default mode (GPU only);
  resnet_fast             resnet_fast.from_torchvision(model): model.eval() / training as a user runs it;
  resnet_fast_optimized   resnet_fast.optimize_for_inference(model, dtype, cuda_graph=True) (inference).
A training step is forward, cross-entropy, backward and an SGD (momentum) step on synthetic data.
extra_info: images/s, speedup over torchvision (and over compile), peak device memory and its ratio
to torchvision's, the logits' dtype, device, versions, date.
"""

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision

import harness
import resnet_fast
from harness import CUDA, DEVICE, DTYPE

INFER_IMPLS = ["torchvision"] + (["compile"] if CUDA else []) + ["resnet_fast", "resnet_fast_optimized"]
TRAIN_IMPLS = ["torchvision"] + (["compile"] if CUDA else []) + ["resnet_fast"]


def _cases(shapes, impls):
    # The implementation varies fastest and the baselines come first, so their medians exist when
    # the others report speedups.
    return [pytest.param(arch, batch, size, impl, id=f"{arch}-b{batch}-{size}px-{impl}")
            for arch in harness.MODELS for batch, size in shapes for impl in impls]


def build(arch: str, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialized on the device: same weights for every implementation
        model = getattr(torchvision.models, arch)()
    model = model.to(memory_format=torch.channels_last)
    return resnet_fast.from_torchvision(model) if impl.startswith("resnet_fast") else model


def autocast(enabled: bool = True):
    if CUDA and enabled:
        return torch.autocast("cuda", dtype=DTYPE)
    return contextlib.nullcontext()


def images(batch: int, size: int):
    """Input batches to rotate among (channels_last, float32: autocast casts inside, as in training)."""
    count = harness.rotation(batch * 3 * size * size * 4, most=4)
    return [torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
            for _ in range(count)]


def report(benchmark, arch, mode, batch, size, impl, median, out_dtype):
    info = benchmark.extra_info
    info.update(harness.environment())
    info.update(model=arch, mode=mode, batch=batch, image_size=size, impl=impl, dtype=str(DTYPE),
                memory_format="channels_last", output_dtype=str(out_dtype), images_per_s=batch / median)
    harness.compare(benchmark, (arch, mode, batch, size), impl, median, memory=harness.peak_memory())


@pytest.mark.parametrize("arch,batch,size,impl", _cases(harness.INFER_SHAPES, INFER_IMPLS))
def test_inference(benchmark, arch, batch, size, impl):
    model = build(arch, impl).eval()
    if impl == "resnet_fast_optimized":
        run = resnet_fast.optimize_for_inference(model, dtype=DTYPE, cuda_graph=True)
    elif impl == "compile":
        torch._dynamo.reset()  # a fresh cache: no recompile limit carried over from earlier cases
        run = torch.compile(model)
    else:
        run = model
    batches = itertools.cycle(images(batch, size))

    def step():
        with torch.inference_mode(), autocast(impl != "resnet_fast_optimized"):
            return run(next(batches))

    out_dtype = step().dtype
    harness.peak_memory_reset()
    median = harness.timed(benchmark, step, rounds=harness.MODEL_ROUNDS["inference"], warmup=3, inner=1)
    report(benchmark, arch, "inference", batch, size, impl, median, out_dtype)


@pytest.mark.parametrize("arch,batch,size,impl", _cases(harness.TRAIN_SHAPES, TRAIN_IMPLS))
def test_train_step(benchmark, arch, batch, size, impl):
    model = build(arch, impl).train()
    if impl == "compile":
        torch._dynamo.reset()
    run = torch.compile(model) if impl == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = itertools.cycle([(x, torch.randint(0, 1000, (batch,), device=DEVICE)) for x in images(batch, size)])

    def step():
        x, target = next(data)
        with autocast():
            logits = run(x)
            loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logits.dtype

    out_dtype = step()
    harness.peak_memory_reset()
    median = harness.timed(benchmark, step, rounds=harness.MODEL_ROUNDS["train"], warmup=2, inner=1)
    report(benchmark, arch, "train", batch, size, impl, median, out_dtype)
