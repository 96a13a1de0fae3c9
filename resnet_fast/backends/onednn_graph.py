"""A folded ResNet trunk compiled once per input shape into oneDNN Graph partitions (CPU float32).

optimize_for_inference's per-conv path calls one oneDNN convolution per layer from Python; each call
builds its oneDNN primitive descriptor again (about 40 us of CPU time per conv, 53 convs in resnet50,
~10% of a batch-1 forward on 2 cores) and allocates its output. Here the whole trunk

    x [N, C, H, W] -> stem conv + ReLU -> pool -> blocks -> avgpool -> flatten -> features [N, F]

(every conv with its BatchNorm folded: y = act(conv(x, W') + b' [+ shortcut])) is traced once for a
fixed input shape, frozen (W', b' become constants) and handed to PyTorch's oneDNN Graph fuser
(TorchScript's LLGA bridge), which groups conv + bias + add + ReLU chains into compiled partitions:
primitives created once, weights reordered once into the layout each kernel wants, intermediates
managed inside the partition. The kernels are the same oneDNN convolutions.

The fuser is a process-wide TorchScript switch; it is turned on only while the trace is optimized
(its first profiled runs) and restored afterwards. The frozen constants are the folded tensors of
that moment: the caller drops a compiled trunk whenever it refolds, and compiles again.
"""

import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_FUSED_NODE = "prim::oneDNNFusionGroup"


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch has TorchScript's oneDNN Graph fuser for float32 CPU inference."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.jit, "enable_onednn_fusion") and hasattr(torch.jit, "onednn_fusion_enabled")
            and hasattr(torch.jit, "last_executed_optimized_graph"))


class Trunk(nn.Module):
    """The folded forward up to the pooled features, in plain aten ops for the tracer.

    convs: per conv (W' [Cout, Cin/g, R, S], b' [Cout], (stride, padding, dilation, groups)).
    plan: the stem's conv index, then per block (conv indices of its chain, shortcut conv index or
    None for identity, residual). Tensors are registered as buffers (shared, not copied) so that
    freezing turns them into graph constants."""

    def __init__(self, convs, plan, pool: Optional[nn.Module], avgpool: nn.Module):
        super().__init__()
        self.args = [a for _, _, a in convs]
        for i, (w, b, _) in enumerate(convs):
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
        self.stem, self.blocks = plan
        self.pool, self.avgpool = pool, avgpool

    def _conv(self, i: int, x: Tensor) -> Tensor:
        stride, padding, dilation, groups = self.args[i]
        return F.conv2d(x, getattr(self, f"w{i}"), getattr(self, f"b{i}"), stride, padding, dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self._conv(self.stem, x))
        if self.pool is not None:
            x = self.pool(x)
        for chain, shortcut, residual in self.blocks:
            a = x
            for i in chain[:-1]:
                a = torch.relu(self._conv(i, a))
            y = self._conv(chain[-1], a)
            if residual:
                y = y + (x if shortcut is None else self._conv(shortcut, x))
            x = torch.relu(y)
        return torch.flatten(self.avgpool(x), 1)


def compile_trunk(trunk: Trunk, example: Tensor) -> Optional[torch.jit.ScriptModule]:
    """trunk traced and frozen for example's shape and layout, run until the profiling executor has
    optimized it with the oneDNN fuser on; None when the fuser made no partition (e.g. TorchScript's
    profiling executor is off), so the caller keeps its per-conv path."""
    before = torch.jit.onednn_fusion_enabled()
    runs = 1 + (torch._C._jit_get_num_profiled_runs() if hasattr(torch._C, "_jit_get_num_profiled_runs") else 1)
    try:
        torch.jit.enable_onednn_fusion(True)
        with warnings.catch_warnings(), torch.no_grad(), torch.autocast("cpu", enabled=False):
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices: this use is internal
            traced = torch.jit.freeze(torch.jit.trace(trunk.eval(), example, check_trace=False))
            for _ in range(runs + 1):
                traced(example)
            fused = _FUSED_NODE in str(torch.jit.last_executed_optimized_graph())
    finally:
        torch.jit.enable_onednn_fusion(before)
    return traced if fused else None


def run_trunk(trunk: torch.jit.ScriptModule, x: Tensor) -> Tensor:
    """The compiled trunk on x (float32 CPU autocast off: the trace is float32, as it was compiled)."""
    with torch.autocast("cpu", enabled=False):
        return trunk(x)


def supported_pools(pools: List[Optional[nn.Module]]) -> bool:
    """Pooling modules the tracer records as single aten ops (anything else keeps the per-conv path)."""
    kinds = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
    return all(p is None or type(p) in kinds for p in pools)
