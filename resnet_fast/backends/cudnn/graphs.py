"""The cuDNN fused graphs of one conv -> BatchNorm -> ReLU unit, described in plain Python (shapes, NHWC
strides, dtypes, which tensors are bound) and built with the cudnn frontend's Python API on demand.

A `UnitGraph` is one of four patterns (what NVIDIA's MLPerf ResNet-50 runs on Hopper):
  "fprop"  [scale -> bias -> ReLU on x] -> conv_fprop(., W) -> y, genstats(y) -> (sum y, sum y^2)
  "wgrad"  [scale -> bias -> ReLU on x] -> conv_wgrad(., dy) -> dW         (the prologue recomputed on load)
  "dgrad"  conv_dgrad(dy, W) -> dz [-> relu_backward(dz, x*scale + bias) -> g]   (the ReLU mask recomputed)
  "dgrad_dbn"  (prologue only) conv_dgrad(dy, W) -> g = relu_backward(., x*scale + bias), then in the same
           epilogue dx = g*in_scale, sum g and sum g*(x - in_mean): the previous BatchNorm's backward sums
           (in_scale, in_mean, the sums: float32 [1, C, 1, 1]), so g is never written nor read again
The bracketed part is present when the unit's input carries the previous BatchNorm + ReLU (`prologue`);
the BN shift is folded into the bias (bias' = bias - mean*scale), so scale and bias are per-channel
[1, C, 1, 1] vectors in the activations' dtype (float32 vectors are refused by every fused fprop / wgrad
engine: checked deviceless, cuDNN 9.24, sm_90; the dgrad_dbn graph takes float32 ones as well, for every
resnet18 / resnet50 unit in both half dtypes: `vectors`); intermediates are float32. Activations are NHWC: dims
are always given in NCHW order with channels-last strides, on intermediate (virtual) tensors too: cuDNN
replaces a stride given without its dims by NCHW strides.

Shapes: x [N, C, H, W], W [K, C, R, S], y / dy [N, K, P, Q]. Groups are not supported (ResNeXt stays on
the other engines).
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

PATTERNS = ("fprop", "wgrad", "dgrad", "dgrad_dbn")


class Binding(NamedTuple):
    """A non-virtual tensor of a graph: what execute() must be given."""
    name: str
    role: str                   # "in" or "out"
    dims: Tuple[int, ...]       # NCHW order
    strides: Tuple[int, ...]    # NHWC (channels-last) strides
    dtype: torch.dtype


def nhwc_strides(n: int, c: int, h: int, w: int) -> Tuple[int, int, int, int]:
    return (c * h * w, 1, w * c, c)


class UnitGraph(NamedTuple):
    pattern: str                # one of PATTERNS
    n: int
    c: int                      # input channels
    h: int
    w: int
    k: int                      # output channels
    r: int
    s: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    prologue: bool              # the previous BN + ReLU applied to x (fprop, wgrad) / its ReLU mask (dgrad)
    dtype: torch.dtype          # activations and weights (float16 or bfloat16)
    vectors: Optional[torch.dtype] = None  # scale / bias dtype; None: dtype (float32: dgrad_dbn only, see above)

    @property
    def out_hw(self) -> Tuple[int, int]:
        p = (self.h + 2 * self.padding[0] - self.dilation[0] * (self.r - 1) - 1) // self.stride[0] + 1
        q = (self.w + 2 * self.padding[1] - self.dilation[1] * (self.s - 1) - 1) // self.stride[1] + 1
        return p, q

    def key(self) -> str:
        """Cache key: every field that changes the graph (shape, conv arguments, pattern, dtype)."""
        return "|".join(str(v) for v in self)

    def bindings(self) -> List[Binding]:
        p, q = self.out_hw
        act = lambda name, role, ch, hh, ww: Binding(name, role, (self.n, ch, hh, ww),  # noqa: E731
                                                     nhwc_strides(self.n, ch, hh, ww), self.dtype)
        weight = Binding("w", "in" if self.pattern != "wgrad" else "out", (self.k, self.c, self.r, self.s),
                         nhwc_strides(self.k, self.c, self.r, self.s), self.dtype)
        vec = [Binding(n, "in", (1, self.c, 1, 1), (self.c, 1, self.c, self.c), self.vectors or self.dtype)
               for n in ("scale", "bias")] if self.prologue else []
        if self.pattern == "fprop":
            sdt = torch.float64 if self.dtype == torch.float64 else torch.float32  # (float64: TorchExecutor only)
            stats = [Binding(n, "out", (1, self.k, 1, 1), (self.k, 1, self.k, self.k), sdt)
                     for n in ("sum", "sqsum")]
            return [act("x", "in", self.c, self.h, self.w), *vec, weight, act("y", "out", self.k, p, q), *stats]
        if self.pattern == "wgrad":
            return [act("x", "in", self.c, self.h, self.w), *vec, act("dy", "in", self.k, p, q), weight]
        extra = [act("x", "in", self.c, self.h, self.w), *vec] if self.prologue else []
        if self.pattern == "dgrad_dbn":
            if not self.prologue:
                raise ValueError("the dgrad_dbn graph needs the prologue (its sums are the previous BN's)")
            sdt = torch.float64 if self.dtype == torch.float64 else torch.float32
            cvec = lambda name, role: Binding(name, role, (1, self.c, 1, 1), (self.c, 1, self.c, self.c), sdt)  # noqa: E731
            return [act("dy", "in", self.k, p, q), weight, *extra, cvec("in_scale", "in"), cvec("in_mean", "in"),
                    act("dx", "out", self.c, self.h, self.w), cvec("sum", "out"), cvec("xsum", "out")]
        return [act("dy", "in", self.k, p, q), weight, *extra,
                act("dx", "out", self.c, self.h, self.w)]

    def build(self, device_property=None, sm_version: Optional[int] = None, handle=None):
        """The cudnn pygraph of this unit, validated, and {binding name: cudnn tensor}. Deviceless when
        device_property (cudnn.create_device_properties(json)) and sm_version are given."""
        import cudnn

        dt = {torch.float16: cudnn.data_type.HALF, torch.bfloat16: cudnn.data_type.BFLOAT16,
              torch.float32: cudnn.data_type.FLOAT, torch.float64: cudnn.data_type.DOUBLE}
        kwargs = {"handle": handle} if handle is not None else {"device_property": device_property,
                                                               "sm_version": sm_version}
        g = cudnn.pygraph(io_data_type=dt[self.dtype], intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, **kwargs)
        spec = {b.name: b for b in self.bindings()}
        t: Dict[str, object] = {}
        for b in spec.values():
            if b.role == "in":
                t[b.name] = g.tensor(name=b.name, dim=list(b.dims), stride=list(b.strides), data_type=dt[b.dtype])

        def virtual(v, ch, hh, ww):  # an intermediate kept NHWC, in float32
            return v.set_dim([self.n, ch, hh, ww]).set_stride(list(nhwc_strides(self.n, ch, hh, ww))) \
                .set_data_type(cudnn.data_type.FLOAT)

        def out(v, name):
            b = spec[name]
            t[name] = v.set_output(True).set_name(name).set_dim(list(b.dims)).set_stride(list(b.strides)) \
                .set_data_type(dt[b.dtype])

        conv = dict(padding=list(self.padding), stride=list(self.stride), dilation=list(self.dilation),
                    compute_data_type=cudnn.data_type.FLOAT)
        chw = (self.c, self.h, self.w)
        if self.pattern in ("fprop", "wgrad"):
            a = t["x"]
            if self.prologue:
                a = virtual(g.scale(input=a, scale=t["scale"]), *chw)
                a = virtual(g.bias(input=a, bias=t["bias"]), *chw)
                a = virtual(g.relu(input=a), *chw)
            if self.pattern == "fprop":
                out(g.conv_fprop(image=a, weight=t["w"], **conv), "y")
                s, sq = g.genstats(input=t["y"])
                out(s, "sum")
                out(sq, "sqsum")
            else:
                out(g.conv_wgrad(image=a, loss=t["dy"], **conv), "w")
        elif self.pattern == "dgrad_dbn":
            dz = virtual(g.conv_dgrad(loss=t["dy"], filter=t["w"], **conv), *chw)
            pre = virtual(g.scale(input=t["x"], scale=t["scale"]), *chw)
            pre = virtual(g.bias(input=pre, bias=t["bias"]), *chw)
            grad = virtual(g.relu_backward(loss=dz, input=pre), *chw)
            out(g.scale(input=grad, scale=t["in_scale"]), "dx")
            add = dict(mode=cudnn.reduction_mode.ADD, compute_data_type=cudnn.data_type.FLOAT)
            out(g.reduction(input=grad, **add), "sum")
            centred = virtual(g.sub(a=t["x"], b=t["in_mean"]), *chw)
            out(g.reduction(input=virtual(g.mul(a=grad, b=centred), *chw), **add), "xsum")
        else:
            dz = g.conv_dgrad(loss=t["dy"], filter=t["w"], **conv)
            if self.prologue:
                dz = virtual(dz, *chw)
                pre = virtual(g.scale(input=t["x"], scale=t["scale"]), *chw)
                pre = virtual(g.bias(input=pre, bias=t["bias"]), *chw)
                dz = g.relu_backward(loss=dz, input=pre)
            out(dz, "dx")
        g.validate()
        return g, t


def check_support(graph: "UnitGraph", device_property=None, sm_version: Optional[int] = None,
                  handle=None) -> Tuple[bool, str]:
    """(supported, reason): validate, lower, plan with heuristics A + fallback, check_support."""
    import cudnn

    try:
        g, _ = graph.build(device_property, sm_version, handle)
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        return True, ""
    except Exception as e:  # noqa: BLE001  (cudnnGraphNotSupportedError, or a frontend RuntimeError)
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
