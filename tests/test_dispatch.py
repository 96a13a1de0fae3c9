"""resnet_fast/_dispatch.py: which backend serves which device, with and without RESNET_FAST_BACKEND,
and through the public resnet_fast.use_backend."""

import pytest
import torch

import resnet_fast
from resnet_fast import _dispatch


@pytest.mark.parametrize("wanted,triton_ok,native_ok,cuda,cpu", [
    ("auto", True, True, "triton", "native"),
    ("auto", False, True, "reference", "native"),   # the unverified CUDA C++ kernels are never automatic
    ("auto", False, False, "reference", "reference"),
    ("native", True, True, "native", "native"),
    ("triton", True, True, "triton", "triton"),
    ("reference", True, True, "reference", "reference"),
])
def test_choice(monkeypatch, wanted, triton_ok, native_ok, cuda, cpu):
    monkeypatch.setenv("RESNET_FAST_BACKEND", wanted)
    monkeypatch.setattr(_dispatch, "_triton_supports", lambda device_type: triton_ok)
    monkeypatch.setattr(_dispatch, "_native_supports", lambda device_type: native_ok)
    assert (_dispatch._choose("cuda"), _dispatch._choose("cpu")) == (cuda, cpu)


def test_unavailable_request_warns_and_falls_back(monkeypatch):
    monkeypatch.setenv("RESNET_FAST_BACKEND", "triton")
    monkeypatch.setattr(_dispatch, "_triton_supports", lambda device_type: False)
    with pytest.warns(UserWarning, match="Triton backend cannot serve cuda"):
        assert _dispatch._choose("cuda") == "reference"


def test_bad_value(monkeypatch):
    monkeypatch.setenv("RESNET_FAST_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="RESNET_FAST_BACKEND"):
        _dispatch._choose("cpu")


def test_use_backend_switches_and_restores():
    before = _dispatch.backend_name("cpu")
    with resnet_fast.use_backend("reference", ["cpu"]):
        assert _dispatch.backend_name("cpu") == "reference"
        assert resnet_fast.backend_info()["cpu"]["conv_bn_stats"] == "reference"
        with resnet_fast.use_backend("reference"):  # nests
            assert _dispatch.backend_name("cpu") == "reference"
        assert _dispatch.backend_name("cpu") == "reference"
    assert _dispatch.backend_name("cpu") == before
    with pytest.raises(ValueError, match="unknown resnet_fast backend 'cudnn'"):
        with resnet_fast.use_backend("cudnn"):
            pass
    assert _dispatch.backend_name("cpu") == before


def test_use_backend_refuses_what_cannot_serve(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_supports", lambda device_type: False)
    with pytest.raises(RuntimeError, match="triton backend cannot serve cpu"):
        with resnet_fast.use_backend("triton", ["cpu"]):
            pass


def test_unknown_op_name_raises():
    with pytest.raises(KeyError):
        _dispatch.kernel("conv_bn_stat", torch.zeros(1))


_FAKE_CUDA = "import torch\ntorch.cuda.is_available = lambda: True\ntorch.cuda.device_count = lambda: 1\n"


def _pytest_as_if_cuda(tmp_path, *args):
    """pytest in a subprocess where torch.cuda.is_available() says True from the start (a plugin loaded
    before any conftest), TRITON_INTERPRET unset: what a CUDA machine sees at collection."""
    import os
    import subprocess
    import sys

    (tmp_path / "fake_cuda_plugin.py").write_text(_FAKE_CUDA)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), root, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_cuda_plugin", "-p", "no:cacheprovider",
                           *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_cuda_machine_selects_only_cuda_instances_for_gpu(tmp_path):
    """`pytest -m gpu` on a CUDA machine (simulated) selects CUDA instances only: no [cpu...] case of a
    gpu-marked test (scripts/gpu_check.sh's run would otherwise error on them)."""
    out = _pytest_as_if_cuda(tmp_path, "--collect-only", "-q", "-m", "gpu", "tests/")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert len(ids) > 100, out.stdout[-2000:]
    cpu = [i for i in ids if "cpu" in i.partition("[")[2]]
    assert not cpu, f"gpu-marked CPU instances selected: {cpu[:10]}"


def test_cuda_machine_skips_interpreter_cases_with_a_reason(tmp_path):
    """On a CUDA machine (simulated) a cpu x triton case skips, saying why, instead of failing; the cpu
    cases of the other backends still run."""
    out = _pytest_as_if_cuda(tmp_path, "-q", "-rs", "-k", "cpu", "tests/ops/test_ops.py::test_bn_finalize_gradcheck")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "TRITON_INTERPRET" in out.stdout and "skipped" in out.stdout, out.stdout[-2000:]
    assert "2 passed" in out.stdout, out.stdout[-2000:]  # cpu x native, cpu x reference
