"""Where the time goes: a torch.profiler breakdown by op of one model step, per implementation.

    python benchmarks/profile_model.py [--arch resnet50] [--mode inference|train] [--batch 8] [--size 224]
                                       [--impls torchvision,resnet_fast,resnet_fast_optimized] [--top 12]

Same setup as benchmarks/test_models.py (same weights, channels_last input; CUDA: bf16 autocast,
CPU: float32). Each implementation is warmed up, then `--steps` steps run under the profiler; the
table lists the ops with the most self time (device time on CUDA, CPU time otherwise) per step, so
the rows of two implementations can be set side by side. Prints markdown.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import resnet_fast  # noqa: E402
from test_models import autocast, build  # noqa: E402


def step_fn(arch, mode, impl, batch, size):
    model = build(arch, impl)
    x = torch.randn(batch, 3, size, size, device=harness.DEVICE).contiguous(memory_format=torch.channels_last)
    if mode == "inference":
        optimized = impl in ("resnet_fast_optimized", "resnet_fast_per_conv")  # per_conv: onednn_graph=False
        run = resnet_fast.optimize_for_inference(model.eval(), dtype=harness.DTYPE,
                                                 onednn_graph=impl == "resnet_fast_optimized") \
            if optimized else model.eval()

        def step():
            with torch.inference_mode(), autocast(not optimized):
                run(x)
        return step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    target = torch.randint(0, 1000, (batch,), device=harness.DEVICE)

    def step():
        with autocast():
            loss = F.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def breakdown(step, steps: int, top: int):
    for _ in range(2):
        step()
    harness.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if harness.CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        harness.sync()
    attr = "self_device_time_total" if harness.CUDA else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return total / steps, [(e.key, getattr(e, attr) / steps, e.count // steps) for e in events[:top]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--mode", choices=["inference", "train"], default="inference")
    p.add_argument("--batch", type=int, default=harness.INFER_SHAPES[0][0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--impls", default="torchvision,resnet_fast,resnet_fast_optimized")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    env = harness.environment()
    print(f"{args.arch} {args.mode}, batch {args.batch} x {args.size}², {harness.DTYPE}, channels_last; "
          f"{env['device']}, torch {env['torch']}, {env['date']}\n")
    for impl in args.impls.split(","):
        if args.mode == "train" and impl in ("resnet_fast_optimized", "resnet_fast_per_conv"):
            continue
        total, rows = breakdown(step_fn(args.arch, args.mode, impl, args.batch, args.size), args.steps, args.top)
        print(f"**{impl}**: {total / 1e3:.1f} ms of self {'device' if harness.CUDA else 'CPU'} time per step\n")
        print("| op | ms per step | share | calls per step |\n| --- | --- | --- | --- |")
        for key, us, calls in rows:
            print(f"| `{key}` | {us / 1e3:.2f} | {100 * us / total:.0f}% | {calls} |")
        print()


if __name__ == "__main__":
    main()
