"""Interleaved timing of resnet50 eval, resnet_fast vs torchvision eager, same input, same weights.

    python benchmarks/compare_cpu_eval.py [--batch 8] [--size 224] [--iters 15]

Alternates the two models every iteration so that machine noise (other load, frequency changes)
hits both alike; prints medians and the speedup, and the environment, as JSON."""

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
    args = parser.parse_args()
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval().to(memory_format=fmt)
    fast = resnet_fast.resnet50().eval()
    fast.load_state_dict(tv.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
    times = {"torchvision": [], "resnet_fast": []}
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), tv(x), rtol=1e-3, atol=1e-3)
        for _ in range(args.iters):
            for name, model in (("torchvision", tv), ("resnet_fast", fast)):
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"benchmark": "resnet50 eval", "batch": args.batch, "size": args.size,
                      "torchvision_input_format": args.memory_format, "iters": args.iters,
                      "median_s": med, "speedup": med["torchvision"] / med["resnet_fast"],
                      **environment()}, indent=1, default=str))


if __name__ == "__main__":
    main()
