import os

import pytest

from resnet_fast import _dispatch


@pytest.fixture(params=["native", "reference", "triton"], autouse=True)
def backend(request, monkeypatch, device):
    """Every op test runs once per backend that can serve the device (others are skipped). On CPU the
    Triton backend runs under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA)."""
    if request.param == "native" and not _dispatch._native_supports(device):
        pytest.skip(f"native kernels not available for {device}")
    if request.param == "triton" and not _dispatch._triton_supports(device):
        pytest.fail(f"the Triton backend cannot serve {device} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})")
    monkeypatch.setitem(_dispatch._chosen, device, request.param)
    return request.param
