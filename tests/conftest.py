import os
import random
import sys

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter (numpy, on CPU tensors). Triton reads the
# variable when @triton.jit decorates a kernel, i.e. when resnet_fast's Triton backend is imported.
# With a GPU it stays off (it would interpret the GPU kernels too): see helpers.force_backend.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # for `helpers`

from helpers import cpu_and_cuda  # noqa: E402


def pytest_configure(config):
    torch.use_deterministic_algorithms(False)
    # fp32 comparisons on a GPU: eager (cuDNN) and fused (the Triton GEMM follows cudnn.allow_tf32)
    # both in IEEE fp32, so the 2x-eager rule compares like with like.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(params=cpu_and_cuda)
def device(request):
    return request.param


@pytest.fixture
def backend_switch():
    """force_backend as a fixture: backend_switch(name, device) holds until the test ends."""
    import contextlib

    from helpers import force_backend

    with contextlib.ExitStack() as stack:
        yield lambda name, device: stack.enter_context(force_backend(name, device))
