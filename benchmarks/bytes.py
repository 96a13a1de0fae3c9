"""Bytes moved by one training step (forward, cross-entropy, backward) of a ResNet, per kernel launch,
per engine, in float16 and bfloat16, split memory-bound vs convolution: how a design is judged
between GPU runs. Runs on meta tensors: no GPU, no memory, seconds.

    python benchmarks/bytes.py                                  # resnet50, batch 256, 224^2, both dtypes
    python benchmarks/bytes.py --markdown out.md --launches out.csv   # summary + every launch

Engines (each counted from its own code path, see bytes_record.py):
  eager          torchvision's model, every aten op its own kernel;
  triton-gemm    resnet_fast on its Triton backend (as the registry loads it), convolutions as the Triton
                 implicit GEMM (RESNET_FAST_CONV=triton): BN+ReLU in the operand loads, statistics in the
                 epilogue; backward aten dgrad/wgrad + Triton passes;
  aten+triton    the same backend where cuDNN's convolution wins (RESNET_FAST_CONV=aten): Triton passes around it;
  cudnn-fused    float16: the cuDNN fused-graph engine (resnet_fast.backends.cudnn) for conv_bn_stats and its
                 backward (SBR-conv-genstats; SBR-wgrad, dgrad-dReLU-dBN: dx and the previous BN's sums in
                 the dgrad epilogue), the GPU backend for the rest;
  triton-closed  the backward closed in Triton (planned for bfloat16, counted in float16 too): the Triton backend's
                 "triton-closed" engine (closed_backward.py, forced through the registry's engine router):
                 wgrad and dgrad with the chain rule on load, the BN+ReLU prologue, dReLU and the dBN sums
                 fused; the forward as triton-gemm;
  cudnn+closed   float16: what the dispatch table can combine per unit: the cuDNN fused forward, the
                 triton-closed backward;
  closed-wgrad+cudnn-dgrad  the backward engine of that name forced (resnet_fast/backends/cudnn/closed_wgrad.py):
                 the chain-rule pass, Triton wgrad with the BN+ReLU prologue on load, the cuDNN dgrad-dReLU-dBN
                 graph (bfloat16 too); the forward as triton-gemm.
Figures are lower bounds per launch (each operand read or written once). Running-statistics and
per-channel vector ops are counted (they are tiny); the optimizer step is not (the same for all).
"""

import argparse
import contextlib
import csv
import os
import sys
from collections import defaultdict
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bytes_record import Launch, Recorder, recording_triton  # noqa: E402

import resnet_fast  # noqa: E402
from resnet_fast import backends, bn_math  # noqa: E402

GOALS = {torch.float16: 0.4, torch.bfloat16: 0.5}  # memory-bound bytes, fraction of eager's


def _kernel_modules():
    """The modules whose @triton.jit kernels the recording replaces."""
    from resnet_fast.backends.triton import dgrad_kernels, launch, wgrad_kernels

    return [launch.bk, launch.ck, wgrad_kernels, dgrad_kernels]


def _table(overrides: Dict[str, Callable]) -> Dict[str, Callable]:
    """op -> callable(*op args): the Triton backend as the registry loads it, bn_math for the two per-channel
    ops that are not dispatched, then `overrides`."""
    table = dict(backends.load("triton")[0])
    table.update(bn_finalize=bn_math.finalize, update_running_stats=bn_math.update_running_stats)
    table.update(overrides)
    return table


@contextlib.contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def engines(dtype: torch.dtype) -> Dict[str, tuple]:
    """name -> (module of the model builders, engine table, environment, {op: engine forced through the
    registry's router}) for the engines of dtype."""
    out = {"eager": (torchvision.models, {}, {}, {}),
           "triton-gemm": (resnet_fast, _table({}), {"RESNET_FAST_CONV": "triton"}, {}),
           "aten+triton": (resnet_fast, _table({}), {"RESNET_FAST_CONV": "aten"}, {})}
    from resnet_fast.backends.cudnn import engine as cudnn_engine

    cudnn = cudnn_engine.bound(cudnn_engine.primitives("triton"))
    closed = {"conv_bn_stats_backward": "triton-closed"}
    if dtype == torch.float16:
        out["cudnn-fused"] = (resnet_fast, _table(cudnn), {"RESNET_FAST_CONV": "aten"}, {})
    out["triton-closed"] = (resnet_fast, _table({}), {"RESNET_FAST_CONV": "triton"}, closed)
    if dtype == torch.float16:
        out["cudnn+closed"] = (resnet_fast, _table({"conv_bn_stats": cudnn["conv_bn_stats"]}),
                               {"RESNET_FAST_CONV": "aten"}, closed)
    name = "closed-wgrad+cudnn-dgrad"
    out[name] = (resnet_fast, _table({}), {"RESNET_FAST_CONV": "triton"}, {"conv_bn_stats_backward": name})
    return out


def count_step(family, table: Dict[str, Callable], env: Dict[str, str], forced: Dict[str, str],
               dtype: torch.dtype, batch: int, image: int, arch: str = "resnet50") -> List[Launch]:
    """Every launch of one training step of family.<arch>() on meta tensors, served by `table`."""
    with torch.device("meta"):
        model = getattr(family, arch)()
        model = model.to(dtype=dtype, memory_format=torch.channels_last).train()
        x = torch.empty(batch, 3, image, image, dtype=dtype).contiguous(memory_format=torch.channels_last)
        target = torch.zeros(batch, dtype=torch.long)
    recorder = Recorder(table)
    with contextlib.ExitStack() as stack:
        for op, name in forced.items():
            stack.enter_context(resnet_fast.use_engine(op, name))
        return _count(model, x, target, recorder, env)


def _count(model, x, target, recorder, env) -> List[Launch]:
    with _env(**env), recording_triton(recorder, *_kernel_modules()):
        from resnet_fast.backends.cudnn import engine as cudnn_engine

        # calls cuDNN cannot serve (the 3-channel stem's fprop) go to the composite over Triton's primitives
        with cudnn_engine.recording(recorder), recorder:
            loss = F.cross_entropy(model(x), target)
            loss.backward()
    return recorder.launches


def summarize(launches: List[Launch]) -> Dict[str, float]:
    s = defaultdict(float)
    for lc in launches:
        s[f"{lc.kind}_read"] += lc.read
        s[f"{lc.kind}_written"] += lc.written
        s[f"{lc.kind}_launches"] += 1
    s["memory"] = s["memory_read"] + s["memory_written"]
    s["conv"] = s["conv_read"] + s["conv_written"]
    return s


def by_kernel(launches: List[Launch]) -> List[tuple]:
    """(op, kernel, kind, launches, GB read, GB written), largest first."""
    agg = defaultdict(lambda: [0, 0, 0])
    for lc in launches:
        a = agg[(lc.op or "-", lc.name, lc.kind)]
        a[0] += 1
        a[1] += lc.read
        a[2] += lc.written
    rows = [(*k, n, r / 1e9, w / 1e9) for k, (n, r, w) in agg.items()]
    return sorted(rows, key=lambda r: -(r[4] + r[5]))


def run(batch: int, image: int, dtypes, arch: str = "resnet50"):
    results = {}
    for dtype in dtypes:
        for name, (family, table, env, forced) in engines(dtype).items():
            results[(dtype, name)] = count_step(family, table, env, forced, dtype, batch, image, arch)
    return results


def markdown(results, batch: int, image: int, arch: str) -> str:
    lines = [f"# Bytes per training step: {arch}, batch {batch}, {image}x{image}, channels_last", "",
             "Counted on meta tensors by `python benchmarks/bytes.py` (no GPU): every kernel launch's operands",
             "read + written once (a lower bound per launch). GB = 1e9 bytes.", "",
             "| dtype | engine | launches (mem / conv) | memory-bound GB (read + written) | conv GB | total GB "
             "| memory-bound vs eager | goal |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (dtype, name), launches in results.items():
        s, e = summarize(launches), summarize(results[(dtype, "eager")])
        ratio = s["memory"] / e["memory"]
        goal = GOALS[dtype]
        verdict = "-" if name == "eager" else (f"<= {goal}x: met" if ratio <= goal else f"<= {goal}x: missed")
        lines.append(f"| {str(dtype).split('.')[-1]} | {name} | {int(s['memory_launches'])} / "
                     f"{int(s['conv_launches'])} | {s['memory'] / 1e9:.1f} ({s['memory_read'] / 1e9:.1f} + "
                     f"{s['memory_written'] / 1e9:.1f}) | {s['conv'] / 1e9:.1f} "
                     f"| {(s['memory'] + s['conv']) / 1e9:.1f} "
                     f"| {ratio:.2f}x | {verdict} |")
    for (dtype, name), launches in results.items():
        lines += ["", f"## {str(dtype).split('.')[-1]}, {name}: launches grouped by op and kernel", "",
                  "| resnet_fast op | kernel | kind | launches | GB read | GB written |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {op} | {k} | {kind} | {n} | {r:.2f} | {w:.2f} |"
                  for op, k, kind, n, r, w in by_kernel(launches) if r + w >= 0.01]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "both"], default="both")
    p.add_argument("--markdown", help="write the summary and per-kernel tables here")
    p.add_argument("--launches", help="write every launch as CSV here")
    a = p.parse_args(argv)
    dtypes = [torch.float16, torch.bfloat16] if a.dtype == "both" else [getattr(torch, a.dtype)]
    results = run(a.batch, a.image, dtypes, a.arch)
    text = markdown(results, a.batch, a.image, a.arch)
    print(text.split("\n## ")[0])
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    if a.launches:
        with open(a.launches, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["dtype", "engine", "index", "resnet_fast_op", "kernel", "kind", "bytes_read", "bytes_written"])
            for (dtype, name), launches in results.items():
                for i, lc in enumerate(launches):
                    w.writerow([str(dtype).split(".")[-1], name, i, lc.op, lc.name, lc.kind, lc.read, lc.written])


if __name__ == "__main__":
    main()
