import os
import random
import sys

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter (numpy, on CPU tensors). Triton reads the
# variable when @triton.jit decorates a kernel, i.e. when resnet_fast's Triton backend is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # for `helpers`

CUDA = torch.cuda.is_available()


def pytest_configure(config):
    torch.use_deterministic_algorithms(False)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
