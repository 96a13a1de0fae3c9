"""One GPU probe (a stage of scripts/gpu_check.sh, which gives it its budget; <= 4 minutes): which engine
should serve each resnet50 conv unit, per dtype and direction, measured and checked against aten; plus a
whole step.

    python scripts/gpu_probe.py --out DIR [--budget 230]       # on the GPU machine
    python scripts/gpu_probe.py --out DIR --dry-run            # CPU: tiny shapes, Triton interpreted, the
                                                               # cuDNN graphs run by TorchExecutor
Writes to DIR:
  cudnn_device_properties_sm<NN>.json  cudnn.create_device_properties(0).serialize() (commit it as
                                       resnet_fast/backends/cudnn/device_properties/sm<NN>.json)
  units.json       per (conv shape, dtype, direction, engine): ms, agreement with aten (worst error / bound), or
                   the error
  dispatch_table-<device>.json  the dispatch table (resnet_fast/backends/tables): per (dtype, direction, unit)
                   the fastest engine whose check passed, with that check; commit it as
                   resnet_fast/backends/tables/<device>.json to ship it (--install: also the user cache)
  step.json        resnet50 training step (batch 256, channels_last, autocast): torchvision eager,
                   resnet_fast (RESNET_FAST_CONV as set, else aten: no tuning inside the budget), resnet_fast
                   with the table just measured and, with a budget of 200 s or more, torch.compile(torchvision);
                   per dtype, in images/s
  probe.md         the tables
Engines: the Triton backend's per op (resnet_fast.backends.TRITON_ENGINES), each that can serve the dtype:
forward triton-gemm (the implicit GEMM, default blocks), aten+triton (aten conv + Triton statistics),
cudnn-fused (float16); backward aten+triton (the composite), triton-closed (closed_backward.py), cudnn-fused,
closed-wgrad+cudnn-dgrad (Triton wgrad + cuDNN dgrad-dReLU-dBN graph; float16 and bfloat16).
Stages stop when the budget is spent (what was skipped is written down, never silently dropped).
"""

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import types

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from resnet_fast import reference  # noqa: E402
from resnet_fast.backends.cudnn import deviceless  # noqa: E402
from resnet_fast.backends.cudnn import engine as cudnn_engine  # noqa: E402
from resnet_fast.backends.cudnn.execute import TorchExecutor  # noqa: E402

CL = torch.channels_last
T0 = time.time()


def save_device_properties(out: str) -> str:
    if DRY or not torch.cuda.is_available():
        return "dry run: the committed sm90.json guess is kept"
    import cudnn

    major, minor = torch.cuda.get_device_capability()
    props = json.loads(cudnn.create_device_properties(torch.cuda.current_device()).serialize())
    props["_source"] = (f"measured: cudnn.create_device_properties(0) on {torch.cuda.get_device_name()}, "
                        f"cuDNN {cudnn.backend_version()}, {datetime.date.today()}")
    path = os.path.join(out, f"cudnn_device_properties_sm{major}{minor}.json")
    with open(path, "w") as f:
        json.dump(props, f, indent=1)
    return path


def unit_shapes(dry: bool, max_units: int = 0):
    """Distinct (n, c, h, w, k, r, stride, padding, prologue) conv units of resnet50 (tiny in a dry run)."""
    graphs = deviceless.resnet_unit_graphs("resnet50", 2 if dry else 256, torch.float16, image=32 if dry else 224,
                                           patterns=("fprop",))
    shapes = [(g.n, g.c, g.h, g.w, g.k, g.r, g.stride[0], g.padding[0], g.prologue) for g in graphs]
    if dry:  # channels / 16 (at least 8), three units after the stem (the interpreter is slow on its 7x7)
        shapes = [(n, max(8, c // 16), h, w, max(8, k // 16), r, s, p, pro)
                  for n, c, h, w, k, r, s, p, pro in shapes][1:4]
        shapes.sort(key=lambda sh: not sh[-1])  # units with the BN prologue first
    return shapes[:max_units or None]


def _inputs(shape, dtype, device):
    n, c, h, w, k, r, s, p, pro = shape
    x = torch.randn(n, c, h, w, device=device).to(dtype).contiguous(memory_format=CL)
    wt = (torch.randn(k, c, r, r, device=device) / (c * r * r) ** 0.5).to(dtype).contiguous(memory_format=CL)
    vec = (torch.randn(c, device=device), torch.rand(c, device=device) + 0.5, torch.randn(c, device=device)) \
        if pro else (None, None, None)
    return x, vec, wt, [s, s], [p, p], [1, 1]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_ms(fn, reps: int, warm: bool = True):
    """(median ms over reps calls, the last call's output), after one untimed call when warm (compilation,
    cuDNN plan building, Triton tuning stay out; a dry run times its first calls)."""
    if warm:
        fn()
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        out = fn()
        _sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def check(out, ref):
    """(passed, worst err/bound) under the Triton tuning's rule: finite, max error <= 5% of the reference's
    max + 1e-3, per output (empty / None outputs skipped)."""
    worst = 0.0
    for a, b in zip(out, ref):
        if b is None or b.numel() == 0:
            continue
        a, b = a.float(), b.float()
        if a.shape != b.shape or not bool(torch.isfinite(a).all()):
            return False, float("inf")
        worst = max(worst, float((a - b).abs().max()) / (0.05 * float(b.abs().max()) + 1e-3))
    return worst <= 1.0, worst


def engines(op, dtype, device):
    """name -> callable(*op args): the Triton backend's engines for op (resnet_fast.backends.TRITON_ENGINES,
    the names the dispatch table uses) that can serve dtype on this device (the dry run's cuDNN graphs run
    on CPU through TorchExecutor)."""
    from resnet_fast import backends

    specs = backends.BACKENDS["triton"].engines[op]
    probe_x = types.SimpleNamespace(dtype=dtype, device=torch.device(device))  # what _can_run looks at
    return {name: fn for name, fn in backends.engine_functions("triton", op).items()
            if backends._can_run(specs[name], probe_x) or (DRY and dtype in specs[name].dtypes)}


def probe_unit(shape, dtype, device, reps, budget):
    """Rows {direction, engine, ms, agrees, worst} for one unit, every engine of each direction, each checked
    against the reference ops (aten conv) in float32 on the same rounded inputs."""
    x, (m, sc, b), wt, st, pad, dil = _inputs(shape, dtype, device)
    args = (x, m, sc, b, True, wt, st, pad, dil, 1)
    f32 = lambda t: t.float() if t is not None and t.dim() == 4 else t  # noqa: E731
    ref = reference.conv_bn_stats(*(f32(a) for a in args[:4]), True, f32(wt), st, pad, dil, 1)
    y, mean = ref[0].to(dtype).contiguous(memory_format=CL), ref[1]
    gy, gm, gv = torch.randn_like(y), torch.randn_like(mean) * 1e-2, torch.randn_like(mean) * 1e-2
    mask = [True, m is not None, m is not None, m is not None, True]
    bargs = (gy, gm, gv, x, m, sc, b, True, wt, y, mean, st, pad, dil, 1, mask)
    ref_grads = reference.conv_bn_stats_backward(f32(gy), gm, gv, f32(x), m, sc, b, True, f32(wt), f32(y), mean, st,
                                                 pad, dil, 1, mask)
    rows = []
    for op, direction, a, want in (("conv_bn_stats", "fwd", args, ref),
                                   ("conv_bn_stats_backward", "bwd", bargs, ref_grads)):
        for name, fn in engines(op, dtype, device).items():
            row = {"direction": direction, "engine": name}
            if time.time() - T0 > budget:
                rows.append({**row, "skipped": "budget spent"})
                continue
            try:
                row["ms"], out = _time_ms(lambda: fn(*a), reps, warm=not DRY)
                row["agrees"], row["worst"] = check(out, want)
            except Exception as e:  # noqa: BLE001  (an engine that fails here is simply never chosen)
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
    return rows


def probe_units(shapes, dtypes, device, reps, budget):
    rows = []
    for shape in shapes:  # shapes outermost: a spent budget cuts shapes, not a whole dtype
        for dtype in dtypes:
            base = {"shape": list(shape), "dtype": str(dtype).split(".")[-1]}
            rows += [{**base, **r} for r in probe_unit(shape, dtype, device, reps, budget)]
    return rows


def dispatch_entries(rows):
    """Per (dtype, direction, unit) the fastest engine whose check passed, as dispatch-table entries
    (resnet_fast/backends/tables: an entry records its check; loading refuses one without)."""
    from resnet_fast.backends import tables

    entries = {}
    for r in rows:
        if r.get("agrees") is not True:
            continue
        n, c, h, w, k, rr, s, p, pro = r["shape"]
        key = tables.key(getattr(torch, r["dtype"]), r["direction"], c, h, w, k, rr, rr, [s, s], [p, p], [1, 1], 1,
                         pro, pro)
        e = entries.setdefault(key, {"engine": None, "n": n, "ms": {}, "check": {}})
        e["ms"][r["engine"]] = round(r["ms"], 4)
        if e["engine"] is None or r["ms"] < e["ms"][e["engine"]]:
            e["engine"] = r["engine"]
            e["check"] = {"against": "resnet_fast.reference in float32 (aten conv), same inputs", "passed": True,
                          "worst_err_over_bound": round(r["worst"], 4)}
    return entries


def whole_step(dtypes, device, dry, reps, budget, entries):
    """Images/s of a training step per implementation; "resnet_fast + dispatch table" routes each conv unit to
    the engine the probe chose for it (the table installed in-process), the defaults elsewhere."""
    import torchvision

    import resnet_fast
    from resnet_fast.backends import tables

    batch, image, arch = (2, 32, "resnet18") if dry else (256, 224, "resnet50")
    os.environ.setdefault("RESNET_FAST_CONV", "aten")
    results = []
    for dtype in dtypes:
        impls = {"torchvision eager": getattr(torchvision.models, arch),
                 "resnet_fast": getattr(resnet_fast, arch)}
        if entries:
            impls["resnet_fast + dispatch table"] = getattr(resnet_fast, arch)
        if not dry and budget >= 200:  # compiling costs a minute or more per dtype (gpu_check.sh has a stage for it)
            impls["torch.compile(torchvision)"] = lambda: torch.compile(getattr(torchvision.models, arch)())
        for name, build in impls.items():
            row = {"dtype": str(dtype).split(".")[-1], "impl": name, "arch": arch, "batch": batch,
                   "RESNET_FAST_CONV": os.environ["RESNET_FAST_CONV"]}
            if time.time() - T0 > budget:
                results.append({**row, "skipped": "budget spent"})
                continue
            model = build().to(device, memory_format=CL)
            x = torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=CL)
            target = torch.randint(0, 1000, (batch,), device=device)

            chosen = entries if name.endswith("table") else {}

            def step():
                with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                    loss = torch.nn.functional.cross_entropy(model(x), target)
                loss.backward()

            try:
                with tables.installed(device.type, chosen):  # (validated once, outside the timing)
                    row["images_per_s"] = batch / (_time_ms(step, reps, warm=not dry)[0] / 1e3)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            results.append(row)
    return results


def markdown(rows, table, steps, props) -> str:
    lines = ["# GPU probe", "", f"device properties: {props}", "", "| dtype | shape (n c h w k r s p prologue) | "
             "direction | engine | ms | agrees with aten (worst err / bound) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        res = r.get("error") or r.get("skipped") or ""
        lines.append(f"| {r['dtype']} | {r['shape']} | {r['direction']} | {r['engine']} | {r['ms']:.4} | "
                     f"{r['agrees']} ({r['worst']:.3}) |" if "ms" in r else
                     f"| {r['dtype']} | {r['shape']} | {r['direction']} | {r['engine']} | | {res} |")
    lines += ["", "| dtype | impl | images/s |", "| --- | --- | --- |"]
    lines += [f"| {s['dtype']} | {s['impl']} | {s.get('images_per_s', s.get('error', s.get('skipped')))} |"
              for s in steps]
    chosen = {}
    for k, e in table["entries"].items():
        chosen.setdefault(f"{k.split('|')[0]} {k.split('|')[1]}", []).append(e["engine"])
    lines += ["", f"dispatch table: {len(table['entries'])} entries (dispatch_table-<device>.json); chosen: "
              + "; ".join(f"{g}: " + ", ".join(f"{n} x{v.count(n)}" for n in sorted(set(v)))
                          for g, v in chosen.items())]
    return "\n".join(lines) + "\n"


def _cudnn_version():
    try:
        import cudnn

        return {"cudnn_frontend": getattr(cudnn, "__version__", "?"), "cudnn": str(cudnn.backend_version())}
    except Exception:  # noqa: BLE001  (not installed, or no library: the cudnn-fused engine was not probed)
        return {}


def _not_served(*args):
    raise NotImplementedError("cuDNN has no engine for this graph (the engine would fall back)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget", "--budget-s", dest="budget_s", type=float, default=230.0,
                   help="seconds for the whole probe (scripts/gpu_check.sh gives it its stage budget)")
    p.add_argument("--install", action="store_true",
                   help="also write the table to the user cache (RESNET_FAST_DISPATCH_TABLE or ~/.cache/resnet_fast/"
                        "dispatch/<device>.json), where the runtime reads it")
    p.add_argument("--max-units", type=int, default=None,
                   help="probe only the first N conv units (default: all; 1 in a dry run)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    device = torch.device("cpu" if a.dry_run else "cuda")
    dtypes = [torch.float16] if a.dry_run else [torch.float16, torch.bfloat16]  # interpreter bf16 is wrong
    reps = 1 if a.dry_run else 5
    props = save_device_properties(a.out)
    with contextlib.ExitStack() as stack:
        if a.dry_run:
            stack.enter_context(cudnn_engine.use_executor(TorchExecutor(supports=deviceless.expected_support)))
        stack.enter_context(cudnn_engine.using_fallback({op: _not_served for op in cudnn_engine.IMPLEMENTS}))
        units = a.max_units if a.max_units is not None else (1 if a.dry_run else 0)
        rows = probe_units(unit_shapes(a.dry_run, units), dtypes, device, reps, a.budget_s * 0.6)
    t_units = time.time() - T0
    from resnet_fast.backends import tables

    dev = tables.device_id(device)
    entries = dispatch_entries(rows)
    table = tables.document(dev, entries, f"scripts/gpu_probe.py{' --dry-run' if a.dry_run else ''}, "
                            f"{datetime.date.today()}, reps {reps}", _cudnn_version())
    tables.save(os.path.join(a.out, f"dispatch_table-{tables.slug(dev)}.json"), table)  # checked as loaded
    if a.install and not a.dry_run:
        tables.save(tables.user_path(dev), table)
    steps = whole_step(dtypes, device, a.dry_run, reps, a.budget_s, entries)
    print(f"gpu_probe: units {t_units:.0f} s, whole step {time.time() - T0 - t_units:.0f} s")
    for name, data in (("units.json", rows), ("step.json", steps)):
        with open(os.path.join(a.out, name), "w") as f:
            json.dump(data, f, indent=1)
    text = markdown(rows, table, steps, props)
    with open(os.path.join(a.out, "probe.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"gpu_probe: {time.time() - T0:.0f} s")


if __name__ == "__main__":
    main()
