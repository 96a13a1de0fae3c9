import pytest

from resnet_fast import _dispatch


@pytest.fixture(params=["native", "reference"], autouse=True)
def backend(request, monkeypatch, device):
    """Every op test runs once per backend that can serve the device (others are skipped)."""
    if request.param == "native" and not _dispatch._native_supports(device):
        pytest.skip(f"native kernels not available for {device}")
    monkeypatch.setitem(_dispatch._chosen, device, request.param)
    return request.param
