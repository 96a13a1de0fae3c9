"""The Triton backend (GPU; on CPU under TRITON_INTERPRET=1, which is how CI tests it).

  backend.py       the primitives (bn_act, bn_act_backward, channel_stats as Triton passes; aten conv,
                   dgrad, wgrad) and the two whole-op overrides, conv_bn_stats and conv_bias_act, which
                   run the implicit-GEMM conv with the previous BN+ReLU as its load prologue and the
                   statistics (or bias + residual + ReLU) in its epilogue where tuning measured it faster;
  launch.py        host side: layout, allocation, block sizes, grids;
  conv_kernels.py  the implicit-GEMM convolution kernel;
  bn_kernels.py    BN apply / backward, statistics partials and their Chan merge;
  tuning.py        per-shape choice between the Triton GEMM and aten (cuDNN), cached on disk;
  closed_backward.py  conv_bn_stats_backward closed in Triton (the "triton-closed" engine the dispatch table
                   or resnet_fast.use_engine chooses), over wgrad_kernels.py / dgrad_kernels.py: wgrad with
                   the chain rule and the BN+ReLU prologue on load, dgrad with dReLU and the dBN sums fused.
"""
