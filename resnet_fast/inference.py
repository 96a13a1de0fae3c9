"""optimize_for_inference: a ResNet frozen into folded convolutions, for fixed input shapes.

    fast = resnet_fast.optimize_for_inference(model, dtype=torch.bfloat16, cuda_graph=True, onednn_graph=True)
    logits = fast(images)        # (N, 3, H, W), any floating dtype, on the model's device -> (N, classes) in dtype

Once, at construction:
  * every conv -> BatchNorm pair becomes one conv with the BatchNorm folded in from its running
    statistics, W' = W * gamma/sqrt(rv + eps) per output channel, b' = beta - rm * gamma/sqrt(rv + eps)
    (bn_math.fold_bn: float64 math), then cast to `dtype` and laid out channels_last;
  * each runs as ops.conv_bias_act, bias + residual add + ReLU in the conv's epilogue; fc's weight is
    cast to `dtype` as well. Nothing is folded or cast per call.
  * where the backend has a weight-preparation hook (the native backend on CPU: float32 weights
    reordered into oneDNN's blocked layout, which oneDNN would otherwise redo on every call), each
    folded weight is prepared once, at its first call. A CPU float32 conv whose prepared weight is
    in oneDNN's layout then runs directly as oneDNN's fused convolution (backends/onednn_inference.py:
    no custom-op layer per call; block-end sums accumulated in place into the dead residual).
  * on CPU in float32 with onednn_graph=True, the trunk (stem to pooled features) is instead traced
    and frozen at the first call with a new input shape and compiled by PyTorch's oneDNN Graph fuser
    (backends/onednn_graph.py): partitions of conv + bias + add + ReLU with their primitives built
    once, no per-conv Python or primitive setup per call. fc runs after it as above. Like CUDA graphs,
    the first `max_graphs` shapes get one; a refold drops them (each is compiled again at its shape's
    next call, about a second for resnet50).
Per call the input is copied once into `dtype`, channels_last. On CUDA with cuda_graph=True the whole
forward is captured as a CUDA graph at the first call with a new input shape (after warm-up runs on a
side stream, which also keep Triton autotuning out of the capture) and replayed afterwards. The first
`max_graphs` shapes get a graph; any further shape runs the same ops eagerly, without capture (no
eviction, so a stream of changing shapes never pays for captures over and over). Each call returns a
fresh tensor, never the graph's static output.

Staleness: the result references the source model's tensors. With track_updates=True (default) each
call compares the storage pointer and version counter of every source tensor with those it folded
from and refolds what changed in place, into the same buffers (captured graphs stay valid): optimizer
steps, load_state_dict, running-statistics updates. `.data` edits bypass version counters: call
`refresh()`. With track_updates=False the result is a snapshot until `refresh()`.
It computes what model.eval() computes whatever the source model's mode, and leaves the model as it
is. A source model moved to another device afterwards is an error at the next call.
"""

import itertools
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from .backends import onednn_graph as onednn_graph_mod
from .builders import from_torchvision
from .cifar import CifarResNet
from .frozen import CastLinear, FoldedConv, Frozen
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["optimize_for_inference", "InferenceResNet"]

_WARMUP_RUNS = 2


class _Block(NamedTuple):
    units: List[FoldedConv]                          # conv-BN-ReLU chain; the last one adds the shortcut
    shortcut: Union[None, FoldedConv, nn.Module]     # None: identity; a folded projection; a parameterless module
    residual: bool                                    # False: the paper's "plain" block, nothing added


def _plan_block(block: nn.Module, dtype: torch.dtype, name: str) -> _Block:
    if type(block) not in (BasicBlock, Bottleneck) or type(block.relu) is not nn.ReLU:
        raise TypeError(f"optimize_for_inference: {name} is a {type(block).__name__}; only torchvision's / "
                        f"resnet_fast's BasicBlock and Bottleneck with nn.ReLU are supported")
    units = [FoldedConv(c, b, dtype, f"{name}.conv{i + 1}") for i, (c, b) in enumerate(block._units())]
    ds = block.downsample
    if ds is None:
        shortcut = None
    elif isinstance(ds, nn.Sequential) and len(ds) == 2:
        shortcut = FoldedConv(ds[0], ds[1], dtype, f"{name}.downsample")
    elif not any(True for _ in itertools.chain(ds.parameters(), ds.buffers())):
        shortcut = ds  # e.g. the paper's option A (zero-padded identity): nothing to fold or cast
    else:
        raise TypeError(f"optimize_for_inference: {name}.downsample must be conv + BatchNorm or parameter-free, "
                        f"got {ds!r}")
    return _Block(units, shortcut, bool(getattr(block, "residual", True)))


class InferenceResNet(nn.Module):
    """The result of optimize_for_inference (see the module docstring). It registers no parameters
    and cannot be moved or cast: optimize the source model again for another device or dtype."""

    def __init__(self, model: nn.Module, stages: Tuple[str, ...], pool: Optional[nn.Module], dtype: torch.dtype,
                 cuda_graph: bool, max_graphs: int, track_updates: bool, onednn_graph: bool = True):
        super().__init__()
        self.__dict__["source"] = model  # not a submodule: no second copy in state_dict(), .to() etc.
        self.dtype, self.track_updates, self.max_graphs = dtype, track_updates, max_graphs
        self.device = model.conv1.weight.device
        self.in_channels = model.conv1.in_channels
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if type(model.relu) is not nn.ReLU:
            raise TypeError(f"optimize_for_inference: the stem's activation must be nn.ReLU, got {model.relu!r}")
        self.stem = FoldedConv(model.conv1, model.bn1, dtype, "conv1")
        self.blocks = [_plan_block(b, dtype, f"{lname}.{i}") for lname in stages
                       for i, b in enumerate(getattr(model, lname))]
        self.pools = (pool, model.avgpool)  # after the stem (None: CIFAR nets have none), before fc
        for p in self.pools:
            if p is not None and any(True for _ in p.parameters()):
                raise TypeError(f"optimize_for_inference: pooling must be parameter-free, got {p!r}")
        # fc: nn.Linear is cast once; any other head (nn.Identity, a custom Sequential) runs as is.
        self.__dict__["head"] = CastLinear(model.fc, dtype, "fc") if type(model.fc) is nn.Linear else model.fc
        self._frozen: List[Frozen] = [self.stem, *(u for b in self.blocks for u in b.units),
                                       *(b.shortcut for b in self.blocks if isinstance(b.shortcut, FoldedConv)),
                                       *([self.head] if isinstance(self.head, CastLinear) else [])]
        self._graphs: "OrderedDict[Tuple[int, ...], Tuple[torch.cuda.CUDAGraph, Tensor, Tensor]]" = OrderedDict()
        # CPU float32: a compiled trunk per input shape (None: the fuser made no partition; per-conv path).
        self.onednn_graph = bool(onednn_graph) and self.stem.direct and onednn_graph_mod.available(self.device, dtype) \
            and all(b.shortcut is None or isinstance(b.shortcut, FoldedConv) for b in self.blocks) \
            and onednn_graph_mod.supported_pools(list(self.pools))
        self._cpu_graphs: "OrderedDict[Tuple[int, ...], Optional[torch.jit.ScriptModule]]" = OrderedDict()

    @property
    def graph_shapes(self) -> List[Tuple[int, ...]]:
        """Input shapes that have a captured CUDA graph or a compiled oneDNN Graph trunk, in capture order."""
        return list(self._graphs) + [k for k, g in self._cpu_graphs.items() if g is not None]

    def refresh(self) -> None:
        """Refolds every conv and recasts fc from the source model's current tensors, in place."""
        for f in self._frozen:
            f.refold()
        self._cpu_graphs.clear()  # their frozen constants are the old folded weights

    def _trunk(self) -> onednn_graph_mod.Trunk:
        """The folded trunk as a plain module over this model's folded tensors (shared, not copied)."""
        convs, index = [], {}
        for unit in [self.stem, *(u for b in self.blocks for u in [*b.units, b.shortcut] if u is not None)]:
            index[id(unit)] = len(convs)
            convs.append((unit.weight, unit.bias, unit.args))
        plan = (index[id(self.stem)], [([index[id(u)] for u in b.units],
                                        None if b.shortcut is None else index[id(b.shortcut)], b.residual)
                                       for b in self.blocks])
        return onednn_graph_mod.Trunk(convs, plan, *self.pools)

    def _run_cpu_graph(self, x: Tensor) -> Optional[Tensor]:
        """The compiled trunk for x's shape (compiled now if there is room), then the head; None: no graph."""
        key = tuple(x.shape)
        if key not in self._cpu_graphs:
            if len(self._cpu_graphs) >= self.max_graphs:
                return None
            self._cpu_graphs[key] = onednn_graph_mod.compile_trunk(self._trunk(), x)
        trunk = self._cpu_graphs[key]
        return None if trunk is None else self.head(onednn_graph_mod.run_trunk(trunk, x))

    def _apply(self, fn, recurse=True):
        raise RuntimeError("an InferenceResNet is fixed to the device and dtype it was built for; move or cast the "
                           "source model and call optimize_for_inference again")

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"input must be floating point (it is converted to {self.dtype}), got {x.dtype}")
        if x.device != self.device:
            raise RuntimeError(f"input is on {x.device} but the optimized model is on {self.device}")

    def _run(self, x: Tensor) -> Tensor:
        """The folded forward on x already in dtype, channels_last."""
        pool, avgpool = self.pools
        x = self.stem(x)
        if pool is not None:
            x = pool(x)
        for units, shortcut, residual in self.blocks:
            r = None if not residual else x if shortcut is None else \
                shortcut(x, relu=False) if isinstance(shortcut, FoldedConv) else shortcut(x)
            a = x
            for unit in units[:-1]:
                a = unit(a)
            x = units[-1](a, residual=r, residual_is_dead=True)  # r is the block's input or a fresh projection
        x = torch.flatten(avgpool(x), 1)
        return self.head(x)

    def _capture(self, x: Tensor):
        static_in = torch.empty(x.shape, dtype=self.dtype, device=self.device, memory_format=torch.channels_last)
        static_in.copy_(x)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_RUNS):  # allocations, cuDNN / Triton autotuning: outside the capture
                self._run(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._run(static_in)
        return graph, static_in, static_out

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        for f in self._frozen if self.track_updates else ():
            if f.stale():
                f.refold()
                if isinstance(f, FoldedConv):
                    self._cpu_graphs.clear()
        with torch.no_grad():
            key = tuple(x.shape)
            use_graph = self.cuda_graph and x.shape[0] > 0 and \
                (key in self._graphs or len(self._graphs) < self.max_graphs)
            if not use_graph:
                x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
                out = self._run_cpu_graph(x) if self.onednn_graph and x.shape[0] > 0 else None
                return self._run(x) if out is None else out
            if key not in self._graphs:
                self._graphs[key] = self._capture(x)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()

    def extra_repr(self) -> str:
        return (f"dtype={self.dtype}, device={self.device}, cuda_graph={self.cuda_graph}, "
                f"onednn_graph={self.onednn_graph}, max_graphs={self.max_graphs}, track_updates={self.track_updates}")


def optimize_for_inference(model: nn.Module, dtype: Optional[torch.dtype] = None, cuda_graph: bool = True,
                           max_graphs: int = 4, track_updates: bool = True, onednn_graph: bool = True) -> InferenceResNet:
    """A folded, cast-once, optionally CUDA-graphed inference version of `model` (module docstring).

    model: a resnet_fast.ResNet or CifarResNet, or a torchvision ResNet (converted with from_torchvision,
    sharing its tensors). dtype: the compute dtype (default: the model's; e.g. torch.bfloat16 on a GPU).
    cuda_graph: capture and replay CUDA graphs per input shape (CUDA only; ignored on CPU).
    max_graphs: how many input shapes get a graph (CUDA graph or oneDNN Graph trunk); later shapes run eagerly.
    onednn_graph: on CPU in float32, compile the trunk per input shape with oneDNN Graph (ignored elsewhere)."""
    if isinstance(model, tv.ResNet) and not isinstance(model, ResNet):
        model = from_torchvision(model)
    if isinstance(model, ResNet) and type(model)._forward_impl is ResNet._forward_impl \
            and type(model).forward is tv.ResNet.forward:
        stages, pool = ("layer1", "layer2", "layer3", "layer4"), model.maxpool
    elif isinstance(model, CifarResNet) and type(model).forward is CifarResNet.forward:
        stages, pool = ("layer1", "layer2", "layer3"), None
    else:
        raise TypeError(f"optimize_for_inference expects a resnet_fast ResNet / CifarResNet or a torchvision ResNet "
                        f"with the standard forward, got {type(model).__name__}")
    dtype = model.conv1.weight.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if not isinstance(max_graphs, int) or max_graphs < 0:
        raise ValueError(f"max_graphs must be a non-negative int, got {max_graphs!r}")
    return InferenceResNet(model, stages, pool, dtype, bool(cuda_graph), max_graphs, bool(track_updates),
                           bool(onednn_graph))
