"""scripts/gpu_probe.py --dry-run on CPU: one tiny conv unit on every engine (Triton interpreted, the cuDNN
graphs by TorchExecutor), checked against aten; the dispatch table only names engines that agreed; a tiny
whole step; every output file written. The real probe needs a GPU and has not run yet."""

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
    assert {"units.json", "dispatch_table.json", "step.json", "probe.md"} <= set(os.listdir(tmp_path))
    rows = json.loads((tmp_path / "units.json").read_text())
    assert {r["engine"] for r in rows} == {"triton-gemm", "aten+triton", "triton-closed", "cudnn-fused"}
    assert all(r.get("agrees") is True for r in rows), rows  # every engine matches aten on this unit
    table = json.loads((tmp_path / "dispatch_table.json").read_text())
    assert {k.split("|")[1] for k in table} == {"fwd", "bwd"}
    assert all(v["engine"] in {r["engine"] for r in rows if r["agrees"]} for v in table.values())
    steps = json.loads((tmp_path / "step.json").read_text())
    assert {s["impl"] for s in steps} == {"torchvision eager", "resnet_fast"}
    assert all(s["images_per_s"] > 0 for s in steps), steps
