"""cuDNN fused-graph engine (float16): conv_bn_stats as one SBR-conv-genstats graph, its backward as an
SBR-wgrad graph and a dgrad-dReLU graph, with the primitives' passes for the BN-statistics chain rule
and the dBN sums; closed_wgrad.py pairs the Triton wgrad kernel with the dgrad graph (float16 and bfloat16: the
"closed-wgrad+cudnn-dgrad" engine of resnet_fast.backends.TRITON_ENGINES). The functions are registry
overrides (primitives first); REGISTRY_ENTRY is the backend
declaration (resnet_fast.backends.BACKENDS["cudnn"]) that serves them over the Triton primitives; it is
only used when asked for (RESNET_FAST_BACKEND=cudnn or resnet_fast.use_backend("cudnn")).
Needs the optional `cudnn` extra (nvidia-cudnn-frontend). Never run on a GPU: the graphs are checked
deviceless (deviceless.py), the wiring and math on CPU with stand-in executors.
"""

from .. import BACKENDS
from .engine import IMPLEMENTS, conv_bn_stats, conv_bn_stats_backward, set_fallback  # noqa: F401

# The declaration in resnet_fast.backends.BACKENDS (Triton's primitive module defines conv_bn_stats and
# conv_bias_act, so a backend over it declares both).
REGISTRY_ENTRY = BACKENDS["cudnn"]


def available() -> bool:
    """nvidia-cudnn-frontend imports (a GPU is needed to run, not to import)."""
    try:
        import cudnn  # noqa: F401
    except ImportError:
        return False
    return True
