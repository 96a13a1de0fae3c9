import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The training tests run tiny models, where intra-op threads only add contention (on a shared
    2-core machine a step ran 10x slower with 2 threads than with 1); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
