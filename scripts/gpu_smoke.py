"""Smoke check of the whole model per engine: one resnet50 training step and one eval forward of
resnet_fast against torchvision on the same weights and batch (bfloat16 autocast, channels_last), on
the GPU; the first stage of scripts/gpu_check.sh after the environment, about a minute.

    python3 scripts/gpu_smoke.py [--engines triton,aten] [--tiny] [--json FILE]

Engines: `triton` (the Triton implicit GEMM with its fused prologue / epilogues, RESNET_FAST_CONV=triton),
`aten` (cuDNN convolutions with the Triton BatchNorm kernels around them, RESNET_FAST_CONV=aten),
`native` (the CUDA C++ kernels: set RESNET_FAST_BACKEND=native and run it alone, in its own process,
since a sticky CUDA error would end the process). A smoke check, not a precision test: the relative
L2 error of the logits, the loss, the parameter gradients and the eval logits against torchvision must
stay under TOL (bf16 rounding is ~1e-2; a broken kernel gives O(1)); zero_init_residual keeps the
comparison well conditioned, as in the tests. --tiny: resnet18, batch 2 at 16x16, float32, on the CPU
with the Triton backend interpreted (RESNET_FAST_BACKEND=triton, TRITON_INTERPRET=1): what the CPU
dry run walks.
"""

import argparse
import copy
import json
import os
import sys
import time

import torch

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (not when imported by the planner)
    os.environ.setdefault("RESNET_FAST_BACKEND", "triton")  # the CPU default would be the C++ kernels

import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import resnet_fast  # noqa: E402

TOL = {torch.bfloat16: 0.1, None: 1e-3}  # relative L2 vs torchvision (bf16 autocast / float32)
GPU_CASE = dict(arch="resnet50", batch=32, size=224, dtype=torch.bfloat16)
TINY_CASE = dict(arch="resnet18", batch=2, size=16, dtype=None)


def step(model, x, target, autocast_dtype, device_type):
    """One training step's outputs (logits, loss, parameter gradients) and the eval logits after it."""
    model.train()
    ctx = torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with ctx:
        out = model(x)
        loss = F.cross_entropy(out.float(), target)
    loss.backward()
    grads = torch.cat([p.grad.float().reshape(-1) for p in model.parameters() if p.grad is not None])
    model.eval()
    with torch.no_grad(), ctx:
        eval_out = model(x)
    return {"logits": out.detach().float(), "loss": loss.detach().float().reshape(1), "grads": grads,
            "eval_logits": eval_out.float()}


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def models(arch, device, num_classes=1000):
    torch.manual_seed(0)
    with torch.device(device):
        tv = getattr(torchvision.models, arch)(num_classes=num_classes, zero_init_residual=True)
    fast = resnet_fast.from_torchvision(copy.deepcopy(tv))
    return tv.to(memory_format=torch.channels_last), fast.to(memory_format=torch.channels_last)


def batch(case, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case["batch"], 3, case["size"], case["size"], generator=g).to(device)
    target = torch.randint(0, 1000, (case["batch"],), generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last), target


def run_engine(engine, case, device):
    if engine in ("triton", "aten"):
        os.environ["RESNET_FAST_CONV"] = engine
    tv, fast = models(case["arch"], device)
    x, target = batch(case, device)
    start = time.perf_counter()
    got = step(fast, x, target, case["dtype"], device.type)
    seconds = time.perf_counter() - start
    want = step(tv, x, target, case["dtype"], device.type)
    errors = {k: rel_l2(got[k], want[k]) for k in want}
    finite = all(bool(torch.isfinite(v).all()) for v in got.values())
    ok = finite and all(e <= TOL[case["dtype"]] for e in errors.values())
    return {"engine": engine, "ok": ok, "finite": finite, "rel_l2": errors, "seconds_first_step": seconds,
            "backend": resnet_fast.backend_info().get(device.type)}


def _interpreter_blocks():
    """Large blocks for the interpreter, whose cost is per block operation (a resnet18 step then takes
    seconds, as in tests/models/test_device_backends.py); small-block masks are the op tests' job."""
    import importlib  # the backend package was renamed once (backends/gpu -> backends/triton): find it

    for name in ("resnet_fast.backends.triton", "resnet_fast.backends.gpu"):
        try:
            tuning, launch = (importlib.import_module(f"{name}.{m}") for m in ("tuning", "launch"))
            break
        except ImportError:
            continue
    tuning.default_config = lambda cin_g, cout_g, m: tuning.Config(32, 128, 128, 4, 1)
    launch._blocks = lambda c: (64, 128)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="triton,aten")
    ap.add_argument("--tiny", action="store_true", help="resnet18 32x32 float32 on the CPU (dry run)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    case = GPU_CASE if cuda else TINY_CASE
    if not cuda:
        _interpreter_blocks()
    if cuda:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for engine in args.engines.split(","):
        try:
            res = run_engine(engine, case, device)
        except Exception as e:  # noqa: BLE001  (one engine's failure must not hide the others')
            res = {"engine": engine, "ok": False, "error": f"{type(e).__name__}: {e}"}
        results.append(res)
        detail = res.get("error") or " ".join(f"{k} {v:.1e}" for k, v in res["rel_l2"].items())
        print(f"smoke {engine:7} {'PASS' if res['ok'] else 'FAIL'}  {case['arch']} b{case['batch']} "
              f"{case['size']}px {case['dtype'] or 'float32'} on {device.type}: {detail}", flush=True)
    if args.json:
        meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tolerance_rel_l2": TOL[case["dtype"]]}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "case": {k: str(v) for k, v in case.items()}, "results": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
