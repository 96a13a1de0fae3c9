"""DDP on CPU (gloo, 2 processes) against one process, and the fused SyncBatchNorm.

Reference first: one process, resnet18 in float64, the whole batch. Then:
  * SyncBN (resnet_fast.convert_sync_batchnorm + DDP, fused in resnet18 and unfused in a small
    Sequential; nn.SyncBatchNorm with hand-averaged gradients; uneven shards 5 + 3): every rank's
    logits, gradients and running statistics equal the one-process run on the concatenated batch;
  * plain DDP (even shards): each rank's running statistics are its own shard's, and the averaged
    gradients equal the mean of the one-process gradients of the two shards.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _ddp_worker as worker  # noqa: E402

from resnet_fast import sync_bn  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "_ddp_worker.py")
RTOL = 1e-9


def reference(x, y, case=""):
    """One process: (logits, grads, buffers) of a float64 resnet18 step on (x, y), mean loss."""
    model = worker.make_model(case)
    if case == "eager_sync":
        model(x[:2])
        model.apply(lambda m: m.reset_running_stats() if isinstance(m, nn.BatchNorm2d) else None)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return (logits.detach(), {n: p.grad for n, p in model.named_parameters()},
            dict(model.named_buffers()))


def assert_close(name, got, want, rtol=RTOL):
    scale = max(1.0, want.abs().max().item()) if want.dtype.is_floating_point else 1
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3e} (scale {scale:.3e})"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results of _ddp_worker.py (2 gloo processes)."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), "2", str(tmp / "init"), str(tmp / f"rank{r}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{log}"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("case,norm", [("sync", "SyncBatchNorm2d"), ("torch_sync", "SyncBatchNorm"),
                                       ("eager_sync", "SyncBatchNorm2d")])
def test_sync_bn_equals_one_process_on_the_whole_batch(ranks, case, norm):
    x, y = worker.make_batch()
    logits, grads, buffers = reference(x, y, case)
    for r, res in enumerate(ranks):
        got = res[case]
        assert got["types"] == [norm]
        assert_close(f"rank {r} logits", got["logits"], worker.shard(logits, case, r))
        for n, g in grads.items():
            assert_close(f"rank {r} grad {n}", got["grads"][n], g)
        for n, b in buffers.items():
            assert_close(f"rank {r} buffer {n}", got["buffers"][n], b)


def test_plain_ddp_keeps_per_rank_statistics_and_averages_gradients(ranks):
    x, y = worker.make_batch()
    per_shard = [reference(worker.shard(x, "local", r), worker.shard(y, "local", r)) for r in range(2)]
    for r, res in enumerate(ranks):
        got = res["local"]
        assert got["types"] == ["BatchNorm2d"]
        for n, b in per_shard[r][2].items():
            assert_close(f"rank {r} buffer {n}", got["buffers"][n], b)
        for n in per_shard[0][1]:
            assert_close(f"rank {r} grad {n}", got["grads"][n], (per_shard[0][1][n] + per_shard[1][1][n]) / 2)
    mean = "layer1.0.bn1.running_mean"  # the two shards' statistics really differ (the check above can fail)
    assert (ranks[0]["local"]["buffers"][mean] - ranks[1]["local"]["buffers"][mean]).abs().max() > 1e-3


def test_sync_bn_without_process_group_is_local_batchnorm():
    """No process group: a converted model computes exactly what the BatchNorm2d model does, fused
    (nn.SyncBatchNorm falls back to local statistics there too)."""
    x, y = worker.make_batch()
    logits, grads, buffers = reference(x, y)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(worker.make_model())
    assert all(sync_bn.sync_group(m) is None for m in model.modules())
    calls = []
    hook = nn.modules.batchnorm.SyncBatchNorm.forward
    nn.modules.batchnorm.SyncBatchNorm.forward = lambda self, t: calls.append(1) or hook(self, t)
    try:
        out = model(x)
    finally:
        nn.modules.batchnorm.SyncBatchNorm.forward = hook
    assert not calls, "the SyncBatchNorm modules ran unfused"
    F.cross_entropy(out, y).backward()
    assert_close("logits", out.detach(), logits, 1e-12)
    for n, p in model.named_parameters():
        assert_close(f"grad {n}", p.grad, grads[n], 1e-12)
    for n, b in model.named_buffers():
        assert_close(f"buffer {n}", b, buffers[n], 1e-12)
    model.eval()
    with torch.no_grad():
        ref_model = worker.make_model()
        ref_model.load_state_dict(model.state_dict())
        assert_close("eval logits", model(x), ref_model.eval()(x), 1e-12)
