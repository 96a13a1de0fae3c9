"""pytest plugin for the GPU test stage (`-p gpu_tf32_off`, scripts/ on PYTHONPATH): float32 runs in
true float32 everywhere (cuDNN and cuBLAS TF32 off). The tests hold a fused float32 result to twice
eager's error against float64; with TF32 on, the Triton GEMM uses tf32 (it follows
torch.backends.cudnn.allow_tf32) while cuDNN may pick a true-float32 algorithm on tiny odd shapes,
and the comparison would measure the TF32 choice, not the kernels. (tests/conftest.py sets the same
on its own; the stage does not depend on that staying so.)"""

import torch


def pytest_configure(config):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
