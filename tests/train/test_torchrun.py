"""`torchrun --nproc_per_node=2 -m resnet_fast.train --sync-bn` on CPU (gloo) against one process.

With SyncBN, DDP's gradient average and the DistributedSampler's interleaving (rank r takes every
other index of the same permutation), 2 processes x batch 4 take the same steps as 1 process x
batch 8: same weights after the epoch (float32 summation order apart) and the same evaluation
(each rank evaluates its shard; sums are all-reduced). Only rank 0 prints and writes."""

import os
import subprocess
import sys

import torch

from resnet_fast.train import cli

ARGS = ["--arch", "resnet20", "--image-size", "8", "--train-size", "32", "--val-size", "10", "--epochs", "1",
        "--workers", "0", "--no-progress", "--device", "cpu", "--sync-bn", "--lr", "0.02"]


def test_torchrun_two_processes_sync_bn_equals_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "resnet_fast.train", *ARGS, "--batch-size", "4", "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("epoch 1/1: train loss") == 1, proc.stdout  # rank 0 only
    assert "2 process(es)" in proc.stdout
    assert cli.main(["train", *ARGS, "--batch-size", "8", "--output", str(tmp_path / "one")]) == 0

    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert len(two["rng"]) == 2 and len(one["rng"]) == 1  # every rank's RNG state is kept
    for key, want in one["model"].items():
        got = two["model"][key]
        if want.dtype.is_floating_point:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(got, want), key
    (h1,), (h2,) = one["history"], two["history"]
    assert h2["iteration"] == h1["iteration"] == 4
    for key in ("train_loss", "val_loss"):
        assert abs(h2[key] - h1[key]) <= 1e-4 * abs(h1[key]), key
    assert h2["val_top1"] == h1["val_top1"] and h2["val_top5"] == h1["val_top5"]
