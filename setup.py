"""Build of resnet_fast's optional native extension, resnet_fast._C.

Environment switches:
  RESNET_FAST_SKIP_BUILD=1   build nothing native; the package then runs on its plain-PyTorch backend.
  RESNET_FAST_SKIP_CUDA=1    build the C++ CPU kernels only, even where CUDA is available.
  RESNET_FAST_CUDA_ARCHS     CUDA architectures, e.g. "8.0;9.0" (the default: Ampere and Hopper).
  RESNET_FAST_DEBUG=1        a debug build: -O0 -g (host), -G -g (device), assertions kept.
  MAX_JOBS                   parallel compile jobs (ninja).
CUDA sources are compiled when torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME, or
/usr/local/cuda when that holds nvcc).
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _native_extensions():
    if _flag("RESNET_FAST_SKIP_BUILD"):
        return [], {}
    # torch's own CUDA_HOME detection may settle on /usr/local, where the link then fails.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    import torch
    from torch.utils import cpp_extension

    sources = [os.path.relpath(p, ROOT) for p in ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = (
        not _flag("RESNET_FAST_SKIP_CUDA")
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and bool(cuda_sources)
    )
    debug = _flag("RESNET_FAST_DEBUG")
    cxx = ["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"]  # the C++ standard is the one this torch build asks for
    # at::parallel_for is a header template: without OpenMP in *this* build it runs every CPU kernel on one
    # thread. torch links GNU OpenMP (libgomp.so.1); the extension then shares the copy torch loaded.
    link = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    extra = {"cxx": cxx}
    if with_cuda:
        archs = os.environ.get("RESNET_FAST_CUDA_ARCHS", "8.0;9.0")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        extra["nvcc"] = (["-O0", "-g", "-G", "-UNDEBUG"] if debug else ["-O3"]) + ["--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension("resnet_fast._C", sources + cuda_sources, extra_compile_args=extra,
                                          extra_link_args=link, py_limited_api=False)
    else:
        ext = cpp_extension.CppExtension("resnet_fast._C", sources, extra_compile_args=extra, extra_link_args=link)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
