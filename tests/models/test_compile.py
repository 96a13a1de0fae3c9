"""torch.compile(fullgraph=True) of the fused model: forward and backward match eager resnet_fast."""

import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_fast


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compile_resnet18_fullgraph(mode):
    torch._dynamo.reset()
    eager = resnet_fast.resnet18(num_classes=10)
    getattr(eager, mode)()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    t = torch.randint(0, 10, (2,))
    results = []
    for m, params in ((eager, eager), (compiled, compiled_model)):
        xi = x.clone().requires_grad_(True)
        loss = F.cross_entropy(m(xi), t)
        loss.backward()
        results.append((loss.detach(), xi.grad, {n: p.grad for n, p in params.named_parameters()}))
    (l0, g0, p0), (l1, g1, p1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    for name in p0:
        torch.testing.assert_close(p1[name], p0[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    for (name, b0), b1 in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b1, b0, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
