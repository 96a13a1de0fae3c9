import pytest


@pytest.fixture(params=["native", "reference", "triton"], autouse=True)
def backend(request, device, force_backend):
    """Every op test runs once per backend that can serve the device (see helpers.forced_backend for
    which combinations skip). On CPU the Triton backend runs under the interpreter."""
    force_backend(request.param, device)
    return request.param
