"""When a resnet_fast module runs its fused ops, and when it runs torchvision's own forward instead.

The models call every submodule torchvision calls through its `__call__`; what fuses is decided
per call by cheap checks on the module tree (types, hooks), never cached, so surgery just works:

  * a block (or the stem: conv1, bn1, relu) fuses only if it has plain nn.Conv2d / BatchNorm
    modules and nn.ReLU, and none of its inner modules carries a forward hook, forward pre-hook,
    backward hook or an instance `forward`, and no global module hook is registered. Otherwise it
    runs torchvision's unfused forward, so a hook sees exactly torchvision's tensors (pruning's
    pre-hook, Grad-CAM's hooks on a conv, parametrizations: all unfused where they apply);
  * under torch.jit.script, ONNX export (both exporters) and torch.func transforms (grad, vmap,
    jacrev, ...) everything runs unfused: those transforms cannot see through custom ops (TorchScript
    cannot script them, ONNX has no translation for them, functorch needs a vmap rule and
    setup_context autograd), and torchvision's forward is what they expect;
  * under torch.fx symbolic tracing a fusable block becomes one `call_module` node (a leaf) named
    like the block ("layer1.0"), and a fusable stem one call_function node named "relu" (torchvision's
    node of the stem's output), so the traced GraphModule still runs them fused and computes exactly
    what the model computes. A block's inner nodes (torchvision's "layer1.0.conv1", ...,
    "layer1.0.relu_2") are not in the graph: request the block ("layer1.0") instead, or trace
    resnet_fast.to_torchvision(model) (torchvision's graph over the same parameters).

Running-statistics updates of fused units are transactional: a model forward collects them
(`StatsTransaction`) from every block called inside it and applies them once it has succeeded; a
block called on its own, or recomputed by torch.utils.checkpoint during backward, applies its own
at its end (torchvision's checkpoint counts: updated on forward and on recompute).
"""

import threading
from typing import List, Optional

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

from .functional import StatsUpdate, apply_updates

_local = threading.local()  # per thread (DataParallel runs replicas in threads): stack of open transactions


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


def observed(modules) -> bool:
    """Whether torchvision's forward would expose any of `modules` to user code that fusion would skip:
    hooks of any kind, a global module hook, or a `forward` replaced on the instance."""
    if _global_hooks():
        return True
    for m in modules:
        if m is None:
            continue
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__):
            return True
    return False


def is_proxy(x) -> bool:
    return isinstance(x, fx.Proxy)


def fusion_allowed() -> bool:
    """False where the fused custom ops cannot run: TorchScript scripting, ONNX export, torch.func."""
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return True  # torch.compile traces the custom ops as they are (and need not trace the checks below)
    return not (torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch._C._are_functorch_transforms_active())


def fx_leaf(module: nn.Module, x: fx.Proxy) -> fx.Proxy:
    """Records `module(x)` as one call_module node of the graph being traced (module runs fused there)."""
    tracer = x.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})


class _ApplyNow(list):
    """Updates appended here apply at once (see `collector`)."""

    def append(self, update: StatsUpdate) -> None:
        apply_updates([update])


def collector() -> List[StatsUpdate]:
    """Where a fused unit's running-statistics updates go: into the open transaction of the enclosing
    model forward; outside one, applied as each is computed (torchvision's BatchNorm updates in its
    own forward, and torch.utils.checkpoint's recompute may stop right after the last tensor it needs,
    before the block's end); under torch.compile into a plain list that `flush` applies."""
    if torch.compiler.is_compiling():
        return []
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _ApplyNow()


def flush(updates: List[StatsUpdate]) -> None:
    """At a block's end: applies what `collector` left pending (only under torch.compile)."""
    if torch.compiler.is_compiling():
        apply_updates(updates)


def fx_function(fn, x: fx.Proxy, modules, name: str) -> fx.Proxy:
    """Records fn(x, *modules) as one call_function node `name`; the modules enter the graph as
    get_attr nodes, so the traced GraphModule passes its own submodules (their mode, their tensors)."""
    tracer = x.tracer
    args = [tracer.create_proxy("get_attr", tracer.path_of_module(m), (), {},
                                name="_" + tracer.path_of_module(m).replace(".", "_") + "_module") for m in modules]
    return tracer.create_proxy("call_function", fn, (x, *args), {}, name=name)


def begin() -> Optional[List[StatsUpdate]]:
    """Opens a transaction (a model forward); None under torch.compile, where updates apply in place
    (the compiled graph applies buffer mutations at its end anyway)."""
    if torch.compiler.is_compiling():
        return None
    stack = _local.__dict__.setdefault("stack", [])
    updates: List[StatsUpdate] = []
    stack.append(updates)
    return updates


def end(updates: Optional[List[StatsUpdate]]) -> None:
    """Closes the transaction `updates` (call in a finally; `commit` afterwards on success)."""
    if updates is not None:
        _local.stack.pop()


def commit(updates: Optional[List[StatsUpdate]]) -> None:
    """Hands `updates` to the enclosing transaction, or applies them when there is none."""
    if not updates:
        return
    stack = None if torch.compiler.is_compiling() else getattr(_local, "stack", None)
    if stack:
        stack[-1].extend(updates)
    else:
        apply_updates(updates)
