"""`resnet-fast train` end to end on CPU: synthetic data, metrics, checkpoint, plot, backends, resume.

Tiny runs (CIFAR-style nets on 8x8 / 16x16 images, a few steps) through cli.main in this process."""

import csv
import math
import os

import pytest
import torch
from conftest import write_cifar10

import resnet_fast
from resnet_fast.train import checkpoint, cli, models

TINY = ["--image-size", "16", "--train-size", "48", "--val-size", "20", "--batch-size", "16", "--workers", "0",
        "--no-progress"]


def rows(out):
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_train_synthetic_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--arch", "resnet20", "--epochs", "2", "--output", out, "--plot", *TINY]
    args.remove("--no-progress")
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 2/2 [" in captured.err and "img/s ETA" in captured.err  # the progress bar (rank 0, stderr)
    assert "epoch 2/2: train loss" in captured.out
    r = rows(out)
    assert [row["epoch"] for row in r] == ["1", "2"] and [row["iteration"] for row in r] == ["3", "6"]
    for row in r:
        v = {k: float(x) for k, x in row.items()}
        assert all(math.isfinite(x) for x in v.values())
        assert 0 <= v["val_top1"] <= v["val_top5"] <= 100 and 0 <= v["train_top1"] <= 100
        assert v["images_per_s"] > 0
    assert [float(row["lr"]) for row in r] == pytest.approx([0.01, 0.001])  # /10 at epochs 1 and 1.5 of 2
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == "resnet20" and len(state["history"]) == 2
    model = resnet_fast.resnet20(num_classes=10)
    model.load_state_dict(state["model"])  # a plain state_dict of the model


def test_backends_compare_like_for_like(tmp_path):
    """Same seed, same initial weights, same batch: torchvision's eager resnet18 and resnet_fast's
    first-step loss agree to float32 rounding, and the evaluation after one SGD step nearly so."""
    hist = {}
    for backend in ("fast", "torchvision"):
        out = str(tmp_path / backend)
        assert cli.main(["train", "--arch", "resnet18", "--backend", backend, "--epochs", "1", "--output", out,
                         *TINY, "--train-size", "16"]) == 0
        hist[backend] = {k: float(v) for k, v in rows(out)[0].items()}
    assert hist["fast"]["train_loss"] == pytest.approx(hist["torchvision"]["train_loss"], rel=1e-5)
    assert hist["fast"]["val_loss"] == pytest.approx(hist["torchvision"]["val_loss"], rel=1e-3)


def test_torchvision_backend_of_a_cifar_net_runs_unfused():
    model = models.build_model("plain20", "torchvision", 10)
    norms = {type(m) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms == {models.UnfusedBatchNorm2d}
    assert set(model.state_dict()) == set(resnet_fast.plain20().state_dict())
    assert type(models.build_model("resnet18", "torchvision", 10)).__module__.startswith("torchvision")


def test_every_builder_is_an_arch():
    archs = models.available_archs()
    for name in ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet101_2", "resnet20", "resnet110", "plain20",
                 "plain110"):
        assert name in archs
    assert models.is_cifar_arch("resnet56") and not models.is_cifar_arch("resnet50")


def _metrics(out):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")} for row in rows(out)]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, cifar_checksums_off):
    """Stopped right after epoch 1's checkpoint, then --resume: the same metrics and weights, bit for
    bit, as without the stop. CIFAR files, so the random crops / flips (global RNG) are exercised."""
    write_cifar10(str(tmp_path / "data"))
    common = ["train", "--arch", "resnet20", "--data", "cifar10", str(tmp_path / "data"), "--epochs", "3",
              "--batch-size", "16", "--workers", "0", "--no-progress", "--lr", "0.05", "--schedule", "cosine",
              "--warmup-epochs", "1"]
    assert cli.main([*common, "--output", str(tmp_path / "straight")]) == 0

    save = checkpoint.save

    def save_then_stop(path, state):
        save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*common, "--output", str(tmp_path / "stopped")])
    monkeypatch.setattr(checkpoint, "save", save)
    assert not (tmp_path / "stopped" / "metrics.csv").exists()  # the CSV is written after the checkpoint
    torch.manual_seed(123)  # whatever the process did in between
    assert cli.main([*common, "--output", str(tmp_path / "stopped"), "--resume"]) == 0

    assert _metrics(str(tmp_path / "stopped")) == _metrics(str(tmp_path / "straight"))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 9
    assert cli.main([*common, "--output", str(tmp_path / "stopped"), "--resume"]) == 0  # complete: nothing to do
    assert _metrics(str(tmp_path / "stopped")) == _metrics(str(tmp_path / "straight"))


def test_console_script_entry_point():
    """pyproject's `resnet-fast` console script is cli.main (the module entry, `python -m
    resnet_fast.train`, runs in test_torchrun.py)."""
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "resnet-fast"]
    assert ep.load() is cli.main
