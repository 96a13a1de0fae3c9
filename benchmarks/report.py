"""Turns a `pytest benchmarks/ --benchmark-json` file into markdown tables and a throughput plot.

    python benchmarks/report.py results.json [--markdown out.md] [--plot out.png]

Markdown (stdout without --markdown): the environment line, the model table (images/s, speedups
over torchvision eager channels_last and NCHW, torch.compile and ONNX Runtime, peak memory, the load
average while it ran), the targets (GPU and CPU) evaluated on the rows that exist, and the op table (time, TFLOP/s and GB/s against the device's measured limits).
Plot: images/s per model and batch size, one bar per implementation, inference and training side
by side. Reads only the JSON (no torch import), so it runs anywhere matplotlib is installed.
"""

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

IMPL_ORDER = ["torchvision_nchw", "torchvision", "compile", "onnxruntime", "resnet_fast", "resnet_fast_per_conv",
              "resnet_fast_optimized", "eager"]
IMPL_LABEL = {"torchvision_nchw": "torchvision eager NCHW", "torchvision": "torchvision eager",
              "compile": "torch.compile(torchvision)", "onnxruntime": "ONNX Runtime (torch.onnx.export)",
              "resnet_fast": "resnet_fast", "resnet_fast_optimized": "resnet_fast optimize_for_inference",
              "resnet_fast_per_conv": "optimize_for_inference, per-conv path (onednn_graph=False)",
              "eager": "eager PyTorch"}
# Ratio columns of the model table: (extra_info key, header). On CPU the references' ratios come from
# alternated rounds (benchmarks/test_models.py), the torch.compile one from separate tests.
RATIOS = [("speedup_vs_torchvision", "vs torchvision"), ("speedup_vs_torchvision_nchw", "vs eager NCHW"),
          ("speedup_vs_compile", "vs torch.compile"), ("speedup_vs_onnxruntime", "vs ONNX Runtime")]
# (description, mode, device kind, batch (None: every batch), impls, extra_info key, comparison, threshold)
TARGETS = [
    ("GPU resnet50 training step >= 1.3x torchvision eager", "train", "cuda", 256, ("resnet_fast",),
     "speedup_vs_torchvision", ">=", 1.3),
    ("GPU resnet50 training step >= 1.1x torch.compile", "train", "cuda", 256, ("resnet_fast",),
     "speedup_vs_compile", ">=", 1.1),
    ("GPU resnet50 inference >= 1.5x torchvision eager", "inference", "cuda", 256,
     ("resnet_fast", "resnet_fast_optimized"), "speedup_vs_torchvision", ">=", 1.5),
    ("GPU resnet50 peak training memory <= 0.8x eager", "train", "cuda", 256, ("resnet_fast",),
     "memory_vs_torchvision", "<=", 0.8),
    ("CPU resnet50 eval, batch 8 >= 1.3x torchvision eager", "inference", "cpu", 8,
     ("resnet_fast", "resnet_fast_optimized"), "speedup_vs_torchvision", ">=", 1.3),
    ("CPU resnet50 training step >= 1.0x torchvision eager", "train", "cpu", None, ("resnet_fast",),
     "speedup_vs_torchvision", ">=", 1.0),
    ("CPU resnet50 inference >= 1.0x ONNX Runtime", "inference", "cpu", None, ("resnet_fast_optimized",),
     "speedup_vs_onnxruntime", ">=", 1.0),
    ("CPU resnet50 inference >= 1.5x torchvision eager NCHW", "inference", "cpu", None, ("resnet_fast_optimized",),
     "speedup_vs_torchvision_nchw", ">=", 1.5),
]


def load(path: str) -> Tuple[Dict[str, object], List[dict], List[dict]]:
    """(environment, model rows, op rows); a row is a benchmark's extra_info plus name and median_s."""
    with open(path) as f:
        data = json.load(f)
    models, ops = [], []
    for bench in data.get("benchmarks", []):
        row = dict(bench.get("extra_info", {}), name=bench["name"])
        row.setdefault("median_s", bench["stats"]["median"])
        (models if "model" in row else ops if "op" in row else []).append(row)
    env = dict(data.get("machine_info", {}).get("resnet_fast", {}))
    first = (models + ops)[:1]
    for key in ("device", "torch", "triton", "cuda", "date", "bench_set", "onnxruntime"):
        if key not in env and first:
            env[key] = first[0].get(key)
    return env, models, ops


def _fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _arch_key(name: str):
    """resnet18 < resnet50 < resnet101: by the name's letters, then its number."""
    digits = "".join(c for c in name if c.isdigit())
    return name.rstrip("0123456789"), int(digits) if digits else 0


def _impl_key(row: dict):
    impl = row["impl"]
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def _table(header: List[str], rows: List[List[str]]) -> str:
    """A markdown table without the columns that are empty ("—") in every row (CPU: no compile, no memory)."""
    keep = [i for i in range(len(header)) if not rows or any(r[i] != "—" for r in rows)]
    header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def environment_line(env: Dict[str, object]) -> str:
    parts = [f"**{env.get('device', 'unknown device')}**", f"torch {env.get('torch')}", f"triton {env.get('triton')}",
             f"{env.get('date')}", f"set `{env.get('bench_set')}`"]
    if env.get("onnxruntime"):
        parts.insert(3, f"onnxruntime {env['onnxruntime']}")
    limits = env.get("device_limits") or {}
    if limits:
        parts.append(f"measured copy bandwidth {limits['copy_GBps']:.1f} GB/s, matmul "
                     f"{limits['matmul_TFLOPs']:.2f} TFLOP/s ({limits.get('dtype')})")
    return ", ".join(parts)


def model_table(rows: List[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r["mode"] != "inference", _arch_key(r["model"]), r["batch"], _impl_key(r)))
    body = []
    for r in rows:
        mem = r.get("peak_memory_bytes")
        load = r.get("load_average_1min")
        body.append([r["model"], r["mode"], f"{r['batch']} x {r['image_size']}²", IMPL_LABEL.get(r["impl"], r["impl"]),
                     _fmt(r["median_s"] * 1e3, ".1f"), _fmt(r.get("images_per_s"), ".1f"),
                     *[_fmt(r.get(key), ".2f", "x") for key, _ in RATIOS],
                     _fmt(None if mem is None else mem / 2 ** 30, ".2f"),
                     _fmt(r.get("memory_vs_torchvision"), ".2f", "x"),
                     "—" if not load else "–".join(f"{v:.1f}" for v in load)])
    return _table(["model", "mode", "batch", "implementation", "median ms", "images/s", *[h for _, h in RATIOS],
                   "peak GiB", "memory vs torchvision", "load avg"], body)


def targets_table(env: Dict[str, object], rows: List[dict]) -> str:
    kind = "cuda" if env.get("cuda") or any(r.get("cuda") for r in rows) else "cpu"
    body = []
    for text, mode, dev, batch, impls, key, cmp, limit in TARGETS:
        if dev != kind:
            continue
        for r in sorted(rows, key=lambda r: (r["batch"], _impl_key(r))):
            if r["model"] == "resnet50" and r["mode"] == mode and batch in (None, r["batch"]) and r["impl"] in impls:
                value = r.get(key)
                met = None if value is None else (value >= limit if cmp == ">=" else value <= limit)
                body.append([text, IMPL_LABEL.get(r["impl"], r["impl"]), str(r["batch"]), _fmt(value, ".2f", "x"),
                             "—" if met is None else ("met" if met else "**missed**")])
    return _table(["target", "implementation", "batch", "measured", ""], body) if body else ""


def op_table(rows: List[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r["op"], r["layer"], r["direction"] != "forward", _impl_key(r)))
    body = [[r["op"], r["layer"], r["direction"], IMPL_LABEL.get(r["impl"], r["impl"]),
             _fmt(r["median_s"] * 1e3, ".3f"),
             _fmt(r.get("TFLOPs"), ".2f"), _fmt(r.get("GBps"), ".1f"),
             _fmt(None if r.get("roofline_fraction") is None else 100 * r["roofline_fraction"], ".0f", "%"),
             _fmt(r.get("speedup_vs_eager"), ".2f", "x")] for r in rows]
    return _table(["op", "layer", "pass", "implementation", "median ms", "TFLOP/s", "GB/s", "of hardware limit",
                   "vs eager"], body)


def markdown(env: Dict[str, object], models: List[dict], ops: List[dict]) -> str:
    parts = [environment_line(env)]
    if models:
        parts += ["", model_table(models)]
        targets = targets_table(env, models)
        if targets:
            parts += ["", "Targets (resnet50, from the benchmark issue):", "", targets]
    if ops:
        parts += ["", "Ops against the eager sequence they replace (GB/s counts the fused op's minimal traffic; "
                  "'of hardware limit' = max(flops / matmul rate, bytes / copy bandwidth) / time):", "",
                  op_table(ops)]
    return "\n".join(parts) + "\n"


def plot(env: Dict[str, object], models: List[dict], path: str) -> None:
    """Grouped bars: x = (model, batch), one bar per implementation, a panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("inference", "train") if any(r["mode"] == m for r in models)]
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(6.5 * max(1, len(modes)), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in models if r["mode"] == mode]
        groups = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda g: (_arch_key(g[0]), g[1]))
        impls = sorted({r["impl"] for r in rows}, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99)
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            values = {(r["model"], r["batch"]): r.get("images_per_s", 0.0) for r in rows if r["impl"] == impl}
            xs = [g + (k - (len(impls) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=IMPL_LABEL.get(impl, impl))
        ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for m, b in groups])
        ax.set_ylabel("images/s")
        ax.set_title("training step" if mode == "train" else "inference")
        ax.legend(fontsize=8)
    fig.suptitle(f"{env.get('device')} — torch {env.get('torch')} — {env.get('date')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a pytest-benchmark --benchmark-json file")
    parser.add_argument("--markdown", help="write the tables here (default: stdout)")
    parser.add_argument("--plot", help="write the images/s plot here (PNG)")
    args = parser.parse_args(argv)
    env, models, ops = load(args.json)
    if not models and not ops:
        print(f"{args.json}: no resnet_fast benchmark entries", file=sys.stderr)
        return 1
    text = markdown(env, models, ops)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.plot and models:
        plot(env, models, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
