"""scripts/gpu_probe.py --dry-run on CPU: one tiny conv unit on every engine of each direction (Triton
interpreted, the cuDNN graphs by TorchExecutor), checked against aten; the dispatch table it writes loads
strictly (every entry carries its passing check) and only names engines that agreed; a tiny whole step,
also with that table; every output file written. The real probe needs a GPU and has not run yet."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "gpu_probe.py")


def test_dry_run_writes_the_tables(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--max-units", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"units.json", "dispatch_table-cpu.json", "step.json", "probe.md"} <= set(os.listdir(tmp_path))
    rows = json.loads((tmp_path / "units.json").read_text())
    assert {(r["direction"], r["engine"]) for r in rows} == {
        ("fwd", "triton-gemm"), ("fwd", "aten+triton"), ("fwd", "cudnn-fused"),
        ("bwd", "aten+triton"), ("bwd", "triton-closed"), ("bwd", "cudnn-fused"),
        ("bwd", "closed-wgrad+cudnn-dgrad")}
    assert all(r.get("agrees") is True for r in rows), rows  # every engine matches aten on this unit
    from resnet_fast.backends import tables

    entries = tables.load_file(str(tmp_path / "dispatch_table-cpu.json"), {"name": "cpu", "capability": ""})
    assert {k.split("|")[1] for k in entries} == {"fwd", "bwd"}
    for k, e in entries.items():
        ran = {r["engine"]: r["ms"] for r in rows if r["direction"] == k.split("|")[1]}
        assert e["ms"] == {n: round(ms, 4) for n, ms in ran.items()} and e["engine"] == min(ran, key=ran.get)
    steps = json.loads((tmp_path / "step.json").read_text())
    assert {s["impl"] for s in steps} == {"torchvision eager", "resnet_fast", "resnet_fast + dispatch table"}
    assert all(s["images_per_s"] > 0 for s in steps), steps
