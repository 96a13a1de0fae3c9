"""Merges the GPU window's pytest-benchmark JSON files (bench, compile, native stages) into one for
benchmarks/report.py, and gives each model row the speedup over torch.compile measured in the
compile stage (that stage runs apart, so the benchmark process never saw the compile medians).

    python3 scripts/merge_bench.py bench.json [compile.json ...] -o gpu.json   (missing inputs skipped)
"""

import argparse
import json
import os
import sys


def _case(b):
    e = b.get("extra_info", {})
    return (e.get("model"), e.get("mode"), e.get("batch"), e.get("image_size"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    files = [p for p in args.inputs if os.path.exists(p)]
    if not files:
        print("merge_bench: no input file")
        return 1
    merged = json.load(open(files[0]))
    for path in files[1:]:
        merged["benchmarks"] += json.load(open(path)).get("benchmarks", [])
    compiled = {_case(b): b["stats"]["median"] for b in merged["benchmarks"]
                if b.get("extra_info", {}).get("impl") == "compile"}
    for b in merged["benchmarks"]:
        e = b.get("extra_info", {})
        if e.get("model") and e.get("impl") != "compile" and _case(b) in compiled:
            e.setdefault("speedup_vs_compile", compiled[_case(b)] / b["stats"]["median"])
    json.dump(merged, open(args.output, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
