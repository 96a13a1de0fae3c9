"""Interleaved timing of resnet50 eval, resnet_fast vs torchvision eager, same input, same weights.

    python benchmarks/compare_cpu_eval.py [--batch 8] [--size 224] [--iters 15] [--memory-format contiguous]
                                          [--optimized]

Alternates the two models every iteration so that machine noise (other load, frequency changes)
hits both alike; prints medians and the speedup, and the environment, as JSON. --optimized adds
resnet_fast.optimize_for_inference(model) as a third model in the rotation. The input (and the
torchvision model) use --memory-format; resnet_fast converts to channels_last itself."""

import argparse
import json
import statistics
import time

import torch
import torchvision

import resnet_fast
from harness import environment


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last")
    parser.add_argument("--optimized", action="store_true", help="also time optimize_for_inference(model)")
    args = parser.parse_args()
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval().to(memory_format=fmt)
    fast = resnet_fast.resnet50().eval()
    fast.load_state_dict(tv.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
    models = [("torchvision", tv), ("resnet_fast", fast)]
    if args.optimized:
        models.append(("resnet_fast_optimized", resnet_fast.optimize_for_inference(fast)))
    times = {name: [] for name, _ in models}
    with torch.inference_mode():
        for name, model in models[1:]:
            torch.testing.assert_close(model(x), tv(x), rtol=1e-3, atol=1e-3)
        for _ in range(args.iters):
            for name, model in models:
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"benchmark": "resnet50 eval", "batch": args.batch, "size": args.size,
                      "torchvision_input_format": args.memory_format, "iters": args.iters,
                      "median_s": med, "speedup": med["torchvision"] / med["resnet_fast"],
                      **({"speedup_optimized": med["torchvision"] / med["resnet_fast_optimized"]}
                         if args.optimized else {}),
                      **environment()}, indent=1, default=str))


if __name__ == "__main__":
    main()
