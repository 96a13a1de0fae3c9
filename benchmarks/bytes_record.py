"""Recording mode for byte accounting: every kernel launch of a training step, with the bytes it reads
and writes, counted from the code path itself on meta tensors (no GPU, no memory, no arithmetic).

Three sources of launches, all captured by one `Recorder`:
  * aten ops (eager PyTorch, and the aten convolutions / small per-channel ops inside resnet_fast's
    backends): a TorchDispatchMode sees each one; reads = its tensor inputs, writes = its tensor
    outputs (each storage once per launch); views and allocations launch nothing and are skipped;
  * Triton kernels of resnet_fast's GPU backend: `kernel[grid](...)` is replaced, while recording, by a
    stand-in that logs the tensors bound to the pointer arguments the kernel's constexpr flags make it
    touch (`TRITON_POINTERS`, keyed by the kernels' own argument names: a test checks that every
    pointer argument of every kernel is listed, so the table cannot silently drift from the kernels);
  * cuDNN fused graphs: the cuDNN engine's executor is replaced by one that logs the graph's bound
    (non-virtual) tensors, read or written as the graph declares them.
A resnet_fast op (torch.ops.resnet_fast.*) reaching the mode is not counted itself: it is re-routed to
the engine under test (`engine[op_name]`, a function with the op's signature), whose inner launches
are what is counted. Bytes are tensor sizes (numel * element size): one pass over each operand, the
lower bound a kernel can reach (caches and re-reads ignored, as in a roofline).
"""

import contextlib
import inspect
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class Launch(NamedTuple):
    name: str          # aten op, Triton kernel or cuDNN graph
    kind: str          # "conv" (a GEMM-class kernel) or "memory" (memory-bound)
    read: int          # bytes
    written: int
    op: str            # the resnet_fast op it serves ("" for eager / model-level aten ops)


_CONV_ATEN = ("convolution", "convolution_backward", "cudnn_convolution", "mkldnn_convolution", "_convolution")
_NO_KERNEL = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
              "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size",
              "alias", "_has_compatible_shallow_copy_type")


def _bytes(tensors) -> int:
    """Bytes of distinct storages among tensors (a storage passed twice is one operand)."""
    seen: Dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = t.untyped_storage()._cdata
            seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return sum(seen.values())


# Pointer arguments each Triton kernel touches, given its constexpr flags: (reads, writes).
def _bn_act_fwd(k):
    reads = ["x_ptr", "scale_ptr", "bias_ptr"] + (["mean_ptr"] if k["HAS_MEAN"] else [])
    if k["RES_MODE"] > 0:
        reads.append("res_ptr")
    if k["RES_MODE"] == 2:
        reads += ["rscale_ptr", "rbias_ptr"] + (["rmean_ptr"] if k["HAS_RMEAN"] else [])
    return reads, ["out_ptr"]


def _bn_act_bwd(k):
    reads = ["gout_ptr", "scale_ptr"] + (["out_ptr"] if k["RELU"] else [])
    writes = [p for p, need in (("dx_ptr", "NEED_DX"), ("dres_ptr", "NEED_DRES"), ("psum_ptr", "NEED_SUM"),
                                ("pxs_ptr", "NEED_XSUM"), ("prs_ptr", "NEED_RSUM")) if k[need]]
    if k["NEED_DRES"] and k["DUAL"]:
        reads.append("rscale_ptr")
    if k["NEED_XSUM"]:
        reads += ["x_ptr"] + (["mean_ptr"] if k["HAS_MEAN"] else [])
    if k["NEED_RSUM"]:
        reads += ["res_ptr"] + (["rmean_ptr"] if k["HAS_RMEAN"] else [])
    return reads, writes


def _conv_fwd(k):
    reads = ["x_ptr", "w_ptr"]
    if k["PROLOGUE"]:
        reads += ["in_scale_ptr", "in_bias_ptr"] + (["in_mean_ptr"] if k["PRO_MEAN"] else [])
    writes = ["y_ptr"]
    if k["STATS"]:
        writes += ["pmean_ptr", "pm2_ptr"]
    else:  # the bias (+ residual) epilogue
        reads += (["bias_ptr"] if k["HAS_BIAS"] else []) + (["res_ptr"] if k["HAS_RES"] else [])
    return reads, writes


def _chain(k):
    return ["y_ptr", "mean_ptr", "a_ptr", "c_ptr"] if k["CHAIN"] else []


def _wgrad(k):
    reads = ["x_ptr", "gy_ptr"] + _chain(k)
    if k["PROLOGUE"]:
        reads += ["in_scale_ptr", "in_bias_ptr"] + (["in_mean_ptr"] if k["PRO_MEAN"] else [])
    return reads, ["dw_ptr"]


def _dgrad(k):
    reads, writes = ["gy_ptr", "w_ptr"] + _chain(k), ["dx_ptr"]
    if k["PROLOGUE"]:
        reads += ["x_ptr", "in_scale_ptr"] + (["in_bias_ptr"] if k["PRO_RELU"] else []) \
            + (["in_mean_ptr"] if k["PRO_MEAN"] else [])
        writes += ["psum_ptr", "pxs_ptr"]
    return reads, writes


TRITON_POINTERS: Dict[str, Callable] = {
    "_bn_act_fwd_kernel": _bn_act_fwd,
    "_bn_act_bwd_kernel": _bn_act_bwd,
    "_channel_stats_partial_kernel": lambda k: (["y_ptr"], ["pmean_ptr", "pm2_ptr"]),
    "_stats_merge_kernel": lambda k: (["pmean_ptr", "pm2_ptr"], ["out_mean_ptr", "out_m2_ptr"]),
    "_conv_fwd_kernel": _conv_fwd,
    "_wgrad_kernel": _wgrad,
    "_dgrad_kernel": _dgrad,
}
TRITON_CONV_KERNELS = ("_conv_fwd_kernel", "_wgrad_kernel", "_dgrad_kernel")


def kernel_arg_names(kernel) -> List[str]:
    """Argument names of a @triton.jit function (compiled or interpreted)."""
    return list(inspect.signature(kernel.fn).parameters)


class _TritonStandIn:
    """Takes the place of a @triton.jit kernel while recording: `k[grid](*args, **kw)` logs, runs nothing."""

    def __init__(self, name: str, kernel, recorder: "Recorder"):
        self.name, self.kernel, self.recorder = name, kernel, recorder
        self.arg_names = kernel_arg_names(kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound = dict(zip(self.arg_names, args), **kwargs)
            reads, writes = TRITON_POINTERS[self.name](bound)
            kind = "conv" if self.name in TRITON_CONV_KERNELS else "memory"
            self.recorder.log(self.name, kind, [bound[p] for p in reads], [bound[p] for p in writes])
        return launch


class Recorder(TorchDispatchMode):
    """Records launches; resnet_fast ops are served by `engine` (op name -> function) and their inner
    launches recorded under that op's name."""

    def __init__(self, engine: Optional[Dict[str, Callable]] = None):
        super().__init__()
        self.engine = engine or {}
        self.launches: List[Launch] = []
        self._op = ""

    def log(self, name: str, kind: str, reads: Sequence, writes: Sequence) -> None:
        self.launches.append(Launch(name, kind, _bytes(reads), _bytes(writes), self._op))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace == "resnet_fast":
            if name not in self.engine:
                raise KeyError(f"the engine under test has no implementation of resnet_fast::{name}")
            outer, self._op = self._op, name
            try:
                with self:  # the engine's own aten ops are launches too
                    return self.engine[name](*args, **kwargs)
            finally:
                self._op = outer
        out = func(*args, **kwargs)
        if func.is_view or name in _NO_KERNEL or func._schema.name.startswith("aten::sym_"):
            return out
        kind = "conv" if name in _CONV_ATEN else "memory"
        self.log(f"aten.{name}", kind, tree_leaves((args, kwargs)), tree_leaves(out))
        return out


@contextlib.contextmanager
def recording_triton(recorder: Recorder, *kernel_modules):
    """Replaces every listed Triton kernel in `kernel_modules` by a recording stand-in."""
    saved = []
    try:
        for mod in kernel_modules:
            for name in TRITON_POINTERS:
                if hasattr(mod, name):
                    saved.append((mod, name, getattr(mod, name)))
                    setattr(mod, name, _TritonStandIn(name, getattr(mod, name), recorder))
        yield
    finally:
        for mod, name, kernel in reversed(saved):
            setattr(mod, name, kernel)
