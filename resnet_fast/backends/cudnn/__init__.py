"""cuDNN fused-graph engine (float16): conv_bn_stats as one SBR-conv-genstats graph, its backward as an
SBR-wgrad graph and a dgrad-dReLU graph, with the primitives' passes for the BN-statistics chain rule
and the dBN sums. The functions are registry overrides (primitives first); REGISTRY_ENTRY is the backend
declaration that would serve them over the Triton primitives (not in resnet_fast.backends.BACKENDS yet).
Needs the optional `cudnn` extra (nvidia-cudnn-frontend). Never run on a GPU: the graphs are checked
deviceless (deviceless.py), the wiring and math on CPU with stand-in executors.
"""

from .. import Backend
from .engine import IMPLEMENTS, conv_bn_stats, conv_bn_stats_backward, set_fallback  # noqa: F401

# Triton's primitive module defines conv_bn_stats and conv_bias_act, so a backend over it declares both.
REGISTRY_ENTRY = Backend(
    "cudnn", devices=("cuda",), layout="channels_last", primitives="resnet_fast.backends.triton.backend",
    overrides={"conv_bn_stats": "resnet_fast.backends.cudnn.engine:conv_bn_stats",
               "conv_bn_stats_backward": "resnet_fast.backends.cudnn.engine:conv_bn_stats_backward",
               "conv_bias_act": "resnet_fast.backends.triton.backend:conv_bias_act"})


def available() -> bool:
    """nvidia-cudnn-frontend imports (a GPU is needed to run, not to import)."""
    try:
        import cudnn  # noqa: F401
    except ImportError:
        return False
    return True
