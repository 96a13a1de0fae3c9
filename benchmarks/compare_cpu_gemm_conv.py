"""Per convolution of a resnet50 CPU training step: aten's (oneDNN) forward + backward against the native
backend's GEMM convolutions (resnet_fast/backends/native_gemm.py), alternated, on the shapes the step runs.

    python benchmarks/compare_cpu_gemm_conv.py [--batch 4] [--size 160] [--rounds 9] [--markdown out.md]

Each conv of torchvision's resnet50 at the given batch and image size (channels_last, float32, input and
weight requiring grad, as in training) runs forward + backward with aten's F.conv2d and with
native_gemm.conv2d; the path native_gemm.plan picks is printed (gemm / wgrad / aten). Medians per call,
ms; the sum over the step's convs.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from resnet_fast.backends import native_gemm  # noqa: E402

CL = torch.channels_last


def conv_shapes(batch: int, size: int):
    """(input shape, conv) per conv of resnet50, from a forward with hooks."""
    model = torchvision.models.resnet50().eval()
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.append((tuple(a[0].shape), m)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    for h in hooks:
        h.remove()
    return shapes


def step(fn, x, w, g, args):
    x.grad = w.grad = None
    fn(x, w, *args).backward(g)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--markdown")
    a = p.parse_args()
    aten = lambda x, w, s, pd, d, g: F.conv2d(x, w, None, s, pd, d, g)  # noqa: E731
    rows, total = [], {"aten": 0.0, "gemm": 0.0}
    for shape, conv in conv_shapes(a.batch, a.size):
        args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_()
        w = conv.weight.detach().clone().contiguous(memory_format=CL).requires_grad_()
        g = torch.randn_like(aten(x, w, *args))
        how = native_gemm.plan(x, w, *args) or "aten"
        times = {"aten": [], "gemm": []}
        for name, fn in (("aten", aten), ("gemm", native_gemm.conv2d)):
            step(fn, x, w, g, args)  # warm up
        for _ in range(a.rounds):
            for name, fn in (("aten", aten), ("gemm", native_gemm.conv2d)):
                t = time.perf_counter()
                step(fn, x, w, g, args)
                times[name].append((time.perf_counter() - t) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in total:
            total[k] += med[k]
        rows.append((shape, tuple(w.shape), args[0][0], how, med["aten"], med["gemm"]))
    lines = [f"resnet50 convs, training forward + backward, batch {a.batch} x {a.size}², float32 channels_last, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", "| input | weight | stride | path | aten ms | native_gemm ms | speedup |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape, wshape, stride, how, t_aten, t_gemm in rows:
        lines.append(f"| {'x'.join(map(str, shape))} | {'x'.join(map(str, wshape))} | {stride} | {how} | {t_aten:.2f} | "
                     f"{t_gemm:.2f} | {t_aten / t_gemm:.2f}x |")
    lines.append(f"| **all {len(rows)} convs** | | | | **{total['aten']:.1f}** | **{total['gemm']:.1f}** | "
                 f"**{total['aten'] / total['gemm']:.2f}x** |")
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
