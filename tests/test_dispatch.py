"""resnet_fast/_dispatch.py: which backend serves which device, with and without RESNET_FAST_BACKEND."""

import pytest

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
