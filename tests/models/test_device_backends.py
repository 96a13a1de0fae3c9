"""Whole models on the device's fast backend (the Triton kernels: interpreted on CPU, compiled on a GPU)
against torchvision eager in the same dtype, both held to float64: outputs, loss, input and parameter
gradients, running statistics, num_batches_tracked, and eval after the step.

CPU (interpreter): resnet18 at 16x16, float32. GPU: resnet18 and resnet50 in float32, bfloat16 and
float16 at 64x64; the issue's resnet50 step (bf16 autocast, channels_last, batch 32, 224x224) against
torchvision; 100 steps on a fixed batch tracking eager's loss curve; torch.compile(fullgraph=True).
fp32 on a GPU compares eager and fused with TF32 off in both (tests/conftest.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_fast
from helpers import assert_steps_close, force_backend, gpu_only, model_triplet, record_steps


@pytest.fixture
def triton_on(monkeypatch, device):
    """The Triton backend on `device` (the cpu/cuda parametrized tests)."""
    with force_backend("triton", device):
        if device == "cpu":
            _interpreter_blocks(monkeypatch)
        yield device


@pytest.fixture
def triton_cuda():
    """The Triton backend on CUDA, for the gpu_only tests: no device parameter, so `-m gpu` selects
    exactly one (CUDA) instance of each."""
    with force_backend("triton", "cuda"):
        yield


def _interpreter_blocks(monkeypatch):
    # The interpreter's cost is per block operation: large blocks keep a whole resnet18 to seconds.
    # (Small blocks, which exercise every mask, are tests/backends/test_triton.py's job.)
    from resnet_fast.backends.triton import launch, tuning

    monkeypatch.setattr(tuning, "default_config", lambda cin_g, cout_g, m: tuning.Config(32, 128, 128, 4, 1))
    monkeypatch.setattr(launch, "_blocks", lambda c: (64, 128))


def _models(arch, device, dtype):
    torch.manual_seed(0)
    return model_triplet(arch, device, dtype, convert=True, num_classes=10, zero_init_residual=True)


def _compare(fast, eager, ref, dtype):
    assert_steps_close("", fast, eager, ref, dtype=dtype, grouped=False)


def _step(model, x, target, autocast_dtype=None):
    return record_steps(model, x, target, steps=1, lr=None, autocast_dtype=autocast_dtype)


def _cases(device):
    if device == "cpu":
        return [("resnet18", torch.float32, 16)]
    return [(arch, dt, 64) for arch in ("resnet18", "resnet50") for dt in (torch.float32, torch.bfloat16,
                                                                           torch.float16)]


def test_one_step_matches_torchvision(triton_on):
    device = triton_on
    for arch, dtype, size in _cases(device):
        tv, fast, ref = _models(arch, device, dtype)
        x = torch.randn(4, 3, size, size, device=device)
        target = torch.randint(0, 10, (4,), device=device)
        _compare(_step(fast, x.to(dtype), target), _step(tv, x.to(dtype), target), _step(ref, x.double(), target),
                 dtype)


@gpu_only
def test_resnet50_bf16_autocast_step_batch32(triton_cuda):
    tv, fast, ref = _models("resnet50", "cuda", torch.float32)
    x = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (32,), device="cuda")
    _compare(_step(fast, x, target, torch.bfloat16), _step(tv, x, target, torch.bfloat16),
             _step(ref, x.double(), target), torch.bfloat16)


@gpu_only
def test_100_steps_track_eager_loss_curve(triton_cuda):
    """SGD on one fixed batch, bf16 autocast: resnet_fast's loss curve stays within eager's own
    bf16-vs-fp32 deviation (times 2, plus 2% of the starting loss) at every step."""
    losses = {}
    for name, dtype in (("fast", torch.bfloat16), ("eager", torch.bfloat16), ("fp32", None)):
        tv, fast, _ = _models("resnet18", "cuda", torch.float32)
        model = fast if name == "fast" else tv
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        torch.manual_seed(1)
        x = torch.randn(32, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 10, (32,), device="cuda")
        curve = []
        for _ in range(100):
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(x).float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(loss.detach())
        losses[name] = torch.stack(curve).double()
    eager_dev = (losses["eager"] - losses["fp32"]).abs()
    fast_dev = (losses["fast"] - losses["fp32"]).abs()
    limit = 2 * eager_dev.cummax(0).values + 0.02 * losses["fp32"][0]
    assert bool((fast_dev <= limit).all()), f"loss curves diverge: fast {losses['fast']}, eager {losses['eager']}"
    assert losses["fast"][-1] < 0.5 * losses["fast"][0], "resnet_fast did not fit the fixed batch"


@gpu_only
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compile_fullgraph_gpu(mode, triton_cuda):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = resnet_fast.resnet18(num_classes=10).cuda().train(mode == "train")
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(8, 3, 64, 64, device="cuda")
    outs = [m(x) for m in (eager, compiled)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-3, atol=1e-3)


@gpu_only
def test_training_step_captures_in_cuda_graph(triton_cuda):
    """No host synchronization in forward + backward: the whole step captures and replays."""
    tv, fast, _ = _models("resnet18", "cuda", torch.float32)
    x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (8,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fast(x).float(), target)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: Triton compilation and conv tuning happen here, outside capture
            fast.zero_grad(set_to_none=False)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    fast.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_loss = step()
    fast.zero_grad(set_to_none=False)
    graph.replay()
    torch.cuda.synchronize()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_e = F.cross_entropy(tv(x).float(), target)
    loss_e.backward()
    torch.testing.assert_close(static_loss, loss_e, rtol=2e-2, atol=2e-2)
    for (name, p), q in zip(fast.named_parameters(), tv.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@gpu_only
def test_eval_forward_in_cuda_graph_sees_weight_changes(triton_cuda):
    """model.eval() captured in a CUDA graph refolds BatchNorm inside the graph (the fold cache is
    bypassed during capture), so a replay after a weight / running-stat change is not stale."""
    tv, fast, _ = _models("resnet18", "cuda", torch.float32)
    fast.eval(), tv.eval()
    x = torch.randn(4, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):
            fast(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = fast(x)
    with torch.no_grad():
        for m in (fast, tv):
            m.layer1[0].bn1.running_mean.add_(0.5)
            m.layer2[0].conv1.weight.mul_(1.5)
        graph.replay()
        torch.testing.assert_close(static_out, tv(x), rtol=1e-3, atol=1e-3)
