import pytest

from helpers import force_backend


@pytest.fixture(params=["native", "reference", "triton"], autouse=True)
def backend(request, device):
    """Every op test runs once per backend that can serve the device (see helpers.force_backend for
    which combinations skip). On CPU the Triton backend runs under the interpreter."""
    with force_backend(request.param, device):
        yield request.param
