"""The GPU window's CPU dry run (scripts/gpu_check.sh, gpu_plan.py, sm90_compile.py): the recorder sees
the Triton JIT's real specialization rules through the fake sm_90 driver, a recorded specialization
compiles for sm_90 and reports registers / shared memory, the failure rules, the budgets, the merge of
the window's benchmark files. Recording and compiling run in a subprocess: this suite's conftest sets
TRITON_INTERPRET=1, under which Triton never specializes or compiles."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)

import merge_bench  # noqa: E402
import sm90_compile  # noqa: E402

RECORD = r"""
import json, sys, torch
import sm90_compile
sm90_compile.install_fake_driver()
launch, tuning = sm90_compile.triton_module("launch"), sm90_compile.triton_module("tuning")

def conv(n, cin, h, cout, k, dtype=torch.float16, stats=True):
    x = torch.empty(n, cin, h, h, device="meta", dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.empty(cout, cin, k, k, device="meta", dtype=dtype)
    launch.conv2d(x, w, [1, 1], [k // 2] * 2, [1, 1], 1, tuning.Config(64, 64, 32, 4, 3), stats=stats)

keys = {}
for name, args in {"base": (2, 64, 17, 64, 3), "other_h_n": (3, 64, 33, 64, 3), "cin_not_16": (2, 24, 17, 64, 3),
                   "1x1": (2, 64, 17, 64, 1)}.items():
    rec = sm90_compile.Recorder()
    with rec.record():
        conv(*args)
    keys[name] = sorted(k for k in rec.specs if k.startswith("_conv_fwd_kernel"))
    spec = next(s for s in rec.specs.values() if s["kernel"] == "_conv_fwd_kernel")
    keys[name + "_spec"] = spec
import plan_workloads
probe = sm90_compile.Recorder()
with probe.record():
    plan_workloads.probe()  # the GPU probe's Triton engines, the closed backward's kernels among them
closed = [next(s for s in probe.specs.values() if s["kernel"] == k and s["half"])
          for k in ("_wgrad_kernel", "_dgrad_kernel")]
res = sm90_compile.compile_all([keys["1x1_spec"], *closed], workers=1)
print(json.dumps({"keys": {k: v for k, v in keys.items() if not k.endswith("_spec")}, "result": res[0],
                  "closed": res[1:], "probe_kernels": sorted({s["kernel"] for s in probe.specs.values()})}))
"""


@pytest.fixture(scope="module")
def recorded():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, SCRIPTS, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", RECORD], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_recorder_follows_the_jit_specialization_rules(recorded):
    keys = recorded["keys"]
    assert all(len(v) == 1 for v in keys.values()), keys  # one conv launch, one specialization each
    # H, W, M, ... are in do_not_specialize: another batch and image size reuse the same compile.
    assert keys["base"] == keys["other_h_n"]
    # Channel counts stay specialized (% 16 decides vector-load alignment), taps are constexprs.
    assert keys["cin_not_16"] != keys["base"] and keys["1x1"] != keys["base"]


def test_recorded_specialization_compiles_for_sm90(recorded):
    r = recorded["result"]
    assert r["error"] is None, r["error"]
    assert r["half"] and r["registers"] and 0 < r["shared"] <= sm90_compile.SM90_SMEM_LIMIT
    assert sm90_compile.problems([r]) == []


def test_closed_backward_kernels_are_recorded_and_compile_for_sm90(recorded):
    """The probe stage's workload launches the closed Triton backward (the "triton-closed" engine), so the dry
    run's sm_90 compile and the window's precompile cover its kernels; one half-precision specialization of
    each compiles without spills within the shared-memory limit."""
    assert {"_wgrad_kernel", "_dgrad_kernel", "_conv_fwd_kernel"} <= set(recorded["probe_kernels"])
    for r in recorded["closed"]:
        assert r["error"] is None and r["registers"], r
    assert sm90_compile.problems(recorded["closed"]) == []


def test_problems_flag_errors_half_spills_and_shared_memory():
    ok = dict(kernel="k", num_warps=4, num_stages=3, constants=[], error=None, half=True, spill_bytes=0, shared=1024)
    assert sm90_compile.problems([ok]) == []
    assert sm90_compile.problems([{**ok, "half": False, "spill_bytes": 64}]) == []  # fp32 may spill: reported
    assert "spills" in sm90_compile.problems([{**ok, "spill_bytes": 8}])[0]
    assert "shared memory" in sm90_compile.problems([{**ok, "shared": sm90_compile.SM90_SMEM_LIMIT + 1}])[0]
    assert "compile error" in sm90_compile.problems([{**ok, "error": "PTXASError"}])[0]


def _plan(root):
    out = subprocess.run(["bash", os.path.join(root, "scripts", "gpu_check.sh"), "--print-plan"], capture_output=True,
                         text=True, check=True).stdout.split()
    pairs = [(s, int(b)) for s, b in zip(out[0::2], out[1::2])]
    return [s for s, _ in pairs if not s.endswith("*")], [b for s, b in pairs if not s.endswith("*")]


@pytest.mark.parametrize("probe", [False, True])
def test_window_plan_fits_eight_minutes(tmp_path, probe):
    out = subprocess.run(["bash", "-n", os.path.join(SCRIPTS, "gpu_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gpu_check.sh").write_text(open(os.path.join(SCRIPTS, "gpu_check.sh")).read())
    if probe:  # the probe stage appears when its script exists, and the total still fits
        (tmp_path / "scripts" / "gpu_probe.py").write_text("")
    stages, budgets = _plan(str(tmp_path))
    assert stages[:2] == ["env", "smoke"] and stages[-1] == "native"  # native CUDA C++ last
    assert stages.index("compile") > stages.index("bench") > stages.index("tests")
    assert ("probe" in stages) == probe
    assert not probe or stages.index("tests") < stages.index("probe") < stages.index("bench")
    assert sum(budgets) <= 450  # + the last stage's 30 s kill grace <= 480 s


def test_merge_bench_adds_speedup_over_compile(tmp_path):
    def row(impl, median):
        return {"stats": {"median": median}, "extra_info": {"model": "resnet50", "mode": "train", "batch": 256,
                                                             "image_size": 224, "impl": impl}}

    (tmp_path / "b.json").write_text(json.dumps({"machine_info": {}, "benchmarks": [row("resnet_fast", 0.1)]}))
    (tmp_path / "c.json").write_text(json.dumps({"benchmarks": [row("compile", 0.15)]}))
    assert merge_bench.main([str(tmp_path / "b.json"), str(tmp_path / "c.json"), str(tmp_path / "missing.json"),
                             "-o", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())["benchmarks"]
    assert len(merged) == 2 and merged[0]["extra_info"]["speedup_vs_compile"] == pytest.approx(1.5)
