"""cuDNN support checks without a GPU: does cuDNN have an engine for each fused graph of a ResNet?

cuDNN validates, plans and check_supports a graph on CPU when given (a) a device description (a JSON
of the device's properties; `device_properties/sm90.json` ships with the package) and the target
sm_version, and (b) a libcuda.so.1 to link: its runtime-compiled engine library loads the driver even
when it never calls it. The stub built here exports the driver entry points cuDNN 9.24 looks up, each
returning CUDA_ERROR_NO_DEVICE (100); it is loaded (by soname) before cudnn, in a process of its own.

    python -m resnet_fast.backends.cudnn.deviceless --arch resnet18 resnet50 --batch 256 --dtype float16
prints one JSON line per distinct graph of each arch: {"arch", "graph": UnitGraph fields, "supported", "reason"}.
Building plans needs the real driver (cuLibraryLoadData), so this stops at check_support.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

import torch

from .graphs import PATTERNS, UnitGraph

# Driver entry points cuDNN 9.24's engine libraries resolve from libcuda.so.1 (found with LD_DEBUG=symbols).
DRIVER_ENTRY_POINTS = (
    "cuCtxGetCurrent cuCtxGetDevice cuCtxGetLimit cuCtxPopCurrent cuCtxPushCurrent cuDeviceGet "
    "cuDeviceGetAttribute cuDeviceGetCount cuDevicePrimaryCtxRelease cuDevicePrimaryCtxReset "
    "cuDevicePrimaryCtxRetain cuDriverGetVersion cuFuncGetAttribute cuFuncSetAttribute cuGetErrorName "
    "cuGetErrorString cuInit cuKernelGetAttribute cuKernelSetAttribute cuLaunchCooperativeKernel cuLaunchKernel "
    "cuLaunchKernelEx cuLibraryGetKernel cuLibraryLoadData cuLibraryLoadFromFile cuLibraryUnload cuLinkAddData "
    "cuLinkAddData_v2 cuLinkAddFile_v2 cuLinkComplete cuLinkCreate cuLinkCreate_v2 cuLinkDestroy "
    "cuMemcpyDtoH_v2 cuModuleGetFunction cuModuleGetGlobal_v2 cuModuleLoadData cuModuleLoadDataEx "
    "cuModuleLoadFatBinary cuModuleUnload cuOccupancyMaxActiveBlocksPerMultiprocessor "
    "cuOccupancyMaxPotentialClusterSize cuStreamGetCtx cuStreamSynchronize cuTensorMapEncodeTiled "
    "cuThreadExchangeStreamCaptureMode cuGetProcAddress cuGetProcAddress_v2").split()

PROPERTIES_DIR = os.path.join(os.path.dirname(__file__), "device_properties")


def expected_support(unit: UnitGraph) -> bool:
    """What cuDNN 9.24 answered deviceless for sm_90 (tests/backends_cudnn/test_deviceless.py holds every
    resnet18 / resnet50 graph to this rule): float16 everything but a fprop of fewer than 8 input channels
    (the 3-channel stem); bfloat16 no fused fprop (genstats) and no SBR-wgrad."""
    if unit.dtype == torch.float16:
        return not (unit.pattern == "fprop" and unit.c < 8)
    return unit.pattern in ("dgrad", "dgrad_dbn") or (unit.pattern == "wgrad" and not unit.prologue)


def stub_source() -> str:
    body = "\n".join(f"int {name}(void) {{ return 100; }}" for name in DRIVER_ENTRY_POINTS)
    return "/* libcuda.so.1 stand-in: every driver call answers CUDA_ERROR_NO_DEVICE (100). */\n" + body + "\n"


def build_stub(directory: str, cc: str = "gcc") -> str:
    """Compiles the stub into directory/libcuda.so.1 (soname libcuda.so.1) and returns its path."""
    src, lib = os.path.join(directory, "cuda_stub.c"), os.path.join(directory, "libcuda.so.1")
    with open(src, "w") as f:
        f.write(stub_source())
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", lib, src], check=True,
                   capture_output=True)
    return lib


def device_properties_json(sm: int = 90) -> str:
    """The committed device description for sm_<sm> (sm90.json: an H100/H200 guess until a GPU run saves
    the real one with cudnn.create_device_properties(0).serialize(); see its "source" entry)."""
    with open(os.path.join(PROPERTIES_DIR, f"sm{sm}.json")) as f:
        props = json.load(f)
    return json.dumps({k: v for k, v in props.items() if not k.startswith("_")})


def resnet_unit_graphs(arch: str, batch: int, dtype: torch.dtype, image: int = 224,
                       patterns=PATTERNS) -> List[UnitGraph]:
    """Every distinct graph a torchvision `arch` training step needs, stem included: shapes from a meta
    forward pass; a block's conv1 and the projection see a materialized input (no prologue), the other
    convs the previous BatchNorm + ReLU."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, mod, inp[0].shape)))
                 for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        model(torch.empty(batch, 3, image, image))
        for h in hooks:
            h.remove()
    graphs = []
    for name, conv, (n, c, h, w) in seen:
        prologue = name.split(".")[-1] not in ("conv1", "0")
        if conv.groups != 1:
            continue
        for pattern in patterns:
            if pattern.startswith("dgrad") and prologue != (pattern == "dgrad_dbn"):
                continue  # the engine's dgrad: with the prologue dgrad_dbn (dReLU + dBN sums fused), else plain
            g = UnitGraph(pattern, n, c, h, w, conv.out_channels, *conv.kernel_size, tuple(conv.stride),
                          tuple(conv.padding), tuple(conv.dilation), prologue, dtype)
            # dgrad_dbn: vectors in the io dtype (cudnn-fused, as its forward rounds them) and in float32
            # (closed-wgrad+cudnn-dgrad: the ReLU mask as the Triton forward computed it)
            for v in (g, g._replace(vectors=torch.float32)) if pattern == "dgrad_dbn" else (g,):
                if v not in graphs:
                    graphs.append(v)
    return graphs


def chain_rule_prologue_support(props, sm: int, n=256, c=64, h=56, w=56, k=64, r=3) -> List[dict]:
    """Whether cuDNN fuses the BN statistics' chain rule dy = grad_y + a*(y - mean) + c into the loss operand
    of a dgrad / SBR-wgrad graph (float16, float32 vectors): the question that decides whether the cuDNN
    engine's chain-rule pass can go. cuDNN 9.24, sm_90: no (no engine), so the engine keeps the pass."""
    import cudnn

    from .graphs import nhwc_strides

    half, f32 = cudnn.data_type.HALF, cudnn.data_type.FLOAT
    rows = []
    for pattern in ("dgrad", "wgrad"):
        g = cudnn.pygraph(io_data_type=half, intermediate_data_type=f32, compute_data_type=f32,
                          device_property=props, sm_version=sm)
        def act(name, ch):
            return g.tensor(name=name, dim=[n, ch, h, w], stride=list(nhwc_strides(n, ch, h, w)), data_type=half)

        def vec(name, ch, dt):
            return g.tensor(name=name, dim=[1, ch, 1, 1], stride=[ch, 1, ch, ch], data_type=dt)

        def virt(v, ch):
            return v.set_dim([n, ch, h, w]).set_stride(list(nhwc_strides(n, ch, h, w))).set_data_type(f32)

        centred = virt(g.sub(a=act("y", k), b=vec("mean", k, f32)), k)
        dy = virt(g.add(a=act("gy", k), b=virt(g.add(a=virt(g.mul(a=centred, b=vec("a", k, f32)), k),
                                                      b=vec("c", k, f32)), k)), k)
        conv = dict(padding=[r // 2] * 2, stride=[1, 1], dilation=[1, 1], compute_data_type=f32)
        if pattern == "dgrad":
            wt = g.tensor(name="w", dim=[k, c, r, r], stride=list(nhwc_strides(k, c, r, r)), data_type=half)
            out = g.conv_dgrad(loss=dy, filter=wt, **conv).set_dim([n, c, h, w])
            out.set_stride(list(nhwc_strides(n, c, h, w)))
        else:
            z = virt(g.scale(input=act("x", c), scale=vec("scale", c, half)), c)
            z = virt(g.relu(input=virt(g.bias(input=z, bias=vec("bias", c, half)), c)), c)
            out = g.conv_wgrad(image=z, loss=dy, **conv).set_dim([k, c, r, r])
            out.set_stride(list(nhwc_strides(k, c, r, r)))
        out.set_output(True).set_name("out").set_data_type(half)
        try:
            g.validate()
            g.build_operation_graph()
            g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            g.check_support()
            rows.append({"pattern": pattern, "supported": True, "reason": ""})
        except Exception as e:  # noqa: BLE001
            rows.append({"pattern": pattern, "supported": False,
                         "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    return rows


def check_in_subprocess(archs: Sequence[str], batch: int, dtype: str, stub_dir: Optional[str] = None,
                        limit: int = 0, timeout: float = 600, extra: Sequence[str] = ()) -> List[dict]:
    """Runs the check in a fresh interpreter (the stub must never enter a process that uses CUDA)."""
    stub_dir = stub_dir or tempfile.mkdtemp(prefix="resnet_fast_cudnn_")
    lib = build_stub(stub_dir)
    cmd = [sys.executable, "-m", "resnet_fast.backends.cudnn.deviceless", "--arch", *archs, "--batch", str(batch),
           "--dtype", dtype, "--stub", lib, "--limit", str(limit), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="deviceless cuDNN check_support of a ResNet's fused graphs")
    p.add_argument("--arch", nargs="+", default=["resnet50"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--sm", type=int, default=90)
    p.add_argument("--stub", help="a libcuda.so.1 stub to load first (build_stub)")
    p.add_argument("--limit", type=int, default=0, help="check only the first N graphs (0: all)")
    p.add_argument("--chain-rule", action="store_true",
                   help="instead: can the chain rule be a dgrad / wgrad loss prologue (chain_rule_prologue_support)")
    a = p.parse_args(argv)
    if a.stub:
        ctypes.CDLL(a.stub, mode=ctypes.RTLD_GLOBAL)  # later dlopen("libcuda.so.1") finds it by soname
    import cudnn

    from .graphs import check_support

    props = cudnn.create_device_properties(device_properties_json(a.sm))
    if a.chain_rule:
        for row in chain_rule_prologue_support(props, a.sm):
            print(json.dumps(row), flush=True)
        return
    for arch in a.arch:
        graphs = resnet_unit_graphs(arch, a.batch, getattr(torch, a.dtype))
        for g in graphs[: a.limit or None]:
            ok, reason = check_support(g, props, a.sm)
            fields = {k: (str(v).split(".")[-1] if isinstance(v, torch.dtype) else v) for k, v in g._asdict().items()}
            print(json.dumps({"arch": arch, "graph": fields, "supported": ok, "reason": reason}), flush=True)


if __name__ == "__main__":
    main()
