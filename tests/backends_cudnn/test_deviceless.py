"""cuDNN check_support of every fused graph of a resnet18 / resnet50 training step at batch 256 (stem
included), on CPU: a stub libcuda.so.1 built here with gcc, the committed sm_90 device description, in a
process of its own. What cuDNN 9.24 answers (2026-12-01, sm_90):
  float16   every SBR-conv-genstats, SBR-wgrad, plain dgrad and dgrad-dReLU-dBN (dgrad_dbn: dx = g*scale and
            the previous BatchNorm's sums in the dgrad epilogue) graph, except the 3-channel stem's fprop (no
            engine: the engine sends it to the fallback);
  bfloat16  no fused fprop (with or without the prologue: genstats) and no SBR-wgrad; plain wgrad, dgrad and
            dgrad_dbn yes: for every resnet18 / resnet50 unit (the closed-wgrad+cudnn-dgrad engine's graphs).
A later cuDNN that changes an answer fails here: update the README's table with it."""

import json
import shutil

import pytest
import torch

cudnn = pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed (pip install '.[cudnn]'; "
                                            "Linux x86_64 only)")
from resnet_fast.backends.cudnn import deviceless  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the libcuda stub")


def _unit(fields):
    from resnet_fast.backends.cudnn.graphs import UnitGraph

    f = dict(fields, dtype=getattr(torch, fields["dtype"]),
             vectors=getattr(torch, fields["vectors"]) if fields.get("vectors") else None)
    return UnitGraph(**{k: tuple(v) if isinstance(v, list) else v for k, v in f.items()})


@pytest.fixture(scope="module")
def stub_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda_stub"))


@pytest.fixture(scope="module")
def float16_rows(stub_dir):
    return deviceless.check_in_subprocess(["resnet18", "resnet50"], 256, "float16", stub_dir)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_float16_graphs_are_supported(arch, float16_rows):
    rows = [r for r in float16_rows if r["arch"] == arch]
    expected = len(deviceless.resnet_unit_graphs(arch, 256, torch.float16))
    assert len(rows) == expected > 0
    for r in rows:  # the rule the byte accounting and the recording executor use
        assert r["supported"] == deviceless.expected_support(_unit(r["graph"])), json.dumps(r)
    unsupported = [r for r in rows if not r["supported"]]
    assert [(r["graph"]["pattern"], r["graph"]["c"]) for r in unsupported] == [("fprop", 3)], \
        json.dumps(unsupported, indent=1)
    assert {r["graph"]["pattern"] for r in rows} == {"fprop", "wgrad", "dgrad", "dgrad_dbn"}
    assert any(r["graph"]["prologue"] for r in rows) and any(r["graph"]["stride"] == [2, 2] for r in rows)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_data_gradient_graphs_are_supported_for_every_unit(dtype, stub_dir, float16_rows):
    """The closed-wgrad+cudnn-dgrad engine's graphs (dgrad_dbn with the prologue, plain dgrad without) have an
    engine for every resnet18 / resnet50 conv unit at batch 256 in both half dtypes: no Triton dBN pass needed."""
    rows = float16_rows if dtype == "float16" else \
        deviceless.check_in_subprocess(["resnet18", "resnet50"], 256, dtype, stub_dir)
    dgrads = [r for r in rows if r["graph"]["pattern"] in ("dgrad", "dgrad_dbn")]
    for arch in ("resnet18", "resnet50"):
        units = [g for g in deviceless.resnet_unit_graphs(arch, 256, getattr(torch, dtype))
                 if g.pattern in ("dgrad", "dgrad_dbn")]
        assert len([r for r in dgrads if r["arch"] == arch]) == len(units) > 0
    assert {r["graph"]["pattern"] for r in dgrads} == {"dgrad", "dgrad_dbn"}
    assert {r["graph"]["vectors"] for r in dgrads if r["graph"]["pattern"] == "dgrad_dbn"} == {None, "float32"}
    assert all(r["supported"] and r["graph"]["dtype"] == dtype for r in dgrads), \
        json.dumps([r for r in dgrads if not r["supported"]], indent=1)
    for r in rows:  # bfloat16: no fused fprop, no SBR-wgrad; plain wgrad, dgrad, dgrad_dbn yes
        assert r["supported"] == deviceless.expected_support(_unit(r["graph"])), json.dumps(r)


def test_chain_rule_cannot_be_a_prologue_of_the_loss_operand(stub_dir):
    """Why the cuDNN engine keeps its chain-rule pass (dy = grad_y + a*(y - mean) + c): no engine fuses it into
    the dgrad or SBR-wgrad loss operand. A cuDNN that does fails here: fuse it then (engine.py)."""
    rows = deviceless.check_in_subprocess(["resnet50"], 256, "float16", stub_dir, extra=["--chain-rule"])
    assert [(r["pattern"], r["supported"]) for r in rows] == [("dgrad", False), ("wgrad", False)], rows
    assert all(r["reason"].startswith("cudnnGraphNotSupportedError") for r in rows), rows  # built, no engine


def test_stub_answers_no_device(stub_dir):
    """Checked in a child process: the stub must never be loaded into this one (torch and triton load libcuda)."""
    import subprocess
    import sys

    lib = deviceless.build_stub(stub_dir)
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "print(sorted({getattr(lib, n)() for n in sys.argv[2:]}))")
    out = subprocess.run([sys.executable, "-c", code, lib, *deviceless.DRIVER_ENTRY_POINTS], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[100]"  # CUDA_ERROR_NO_DEVICE from every entry point


def test_committed_device_properties_parse():
    props = json.loads(deviceless.device_properties_json(90))
    assert props["deviceVer"] == 900 and not any(k.startswith("_") for k in props)
    assert all(isinstance(v, (int, list, str)) and not isinstance(v, bool) for v in props.values())
    cudnn.create_device_properties(json.dumps(props))  # cuDNN accepts it (raises otherwise)
