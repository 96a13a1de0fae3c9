"""cuDNN fused-graph engine (float16): conv_bn_stats as one SBR-conv-genstats graph, its backward as an
SBR-wgrad graph and a dgrad-dReLU graph with Triton passes for the BN-statistics chain rule and the dBN
sums. Functions have the ops' exact signatures; IMPLEMENTS says which ops and dtypes they serve.
Needs the optional `cudnn` extra (nvidia-cudnn-frontend). Never run on a GPU yet: the graphs are
checked deviceless (deviceless.py), the wiring and math on CPU with stand-in executors.
"""

from .engine import IMPLEMENTS, conv_bn_stats, conv_bn_stats_backward, set_fallback  # noqa: F401


def available() -> bool:
    """nvidia-cudnn-frontend imports (a GPU is needed to run, not to import)."""
    try:
        import cudnn  # noqa: F401
    except ImportError:
        return False
    return True
