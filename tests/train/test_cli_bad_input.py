"""Bad input to `resnet-fast train`: a clear message on stderr, exit status 2, nothing written or
overwritten (every file under the folders involved is compared byte for byte)."""

import os

import pytest
from conftest import write_imagefolder

from resnet_fast.train import cli

TINY = ["--image-size", "8", "--train-size", "32", "--val-size", "8", "--batch-size", "16", "--workers", "0",
        "--no-progress", "--epochs", "1"]


def snapshot(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed one-epoch resnet20 run to resume from / refuse to overwrite."""
    out = str(tmp_path_factory.mktemp("runs") / "r20")
    assert cli.main(["train", "--arch", "resnet20", "--output", out, *TINY]) == 0
    return out


def check_refused(argv, tmp_path, capsys, message, watch=()):
    before = {w: snapshot(w) for w in watch}
    entries = sorted(os.listdir(tmp_path))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert sorted(os.listdir(tmp_path)) == entries, "something was created"
    for w in watch:
        assert snapshot(w) == before[w], f"{w} changed"


@pytest.mark.parametrize("extra,message", [
    (["--arch", "resnet19"], "unknown --arch 'resnet19'; choose one of: plain110,"),
    (["--arch", "resnet20", "--data", "imagefolder"], "--data imagefolder needs exactly one PATH"),
    (["--arch", "resnet20", "--data", "imagenet", "x"], "unknown --data 'imagenet'"),
    (["--arch", "resnet20", "--epochs", "0"], "--epochs 0 is out of range"),
    (["--arch", "resnet20", "--amp", "fp8"], "unknown --amp 'fp8'"),
    (["--arch", "resnet20", "--backend", "tensorflow"], "unknown --backend 'tensorflow'"),
    (["--arch", "resnet20", "--train-size", "8"], "fewer than one batch of --batch-size 16"),
])
def test_bad_arguments(tmp_path, capsys, extra, message):
    out = str(tmp_path / "out")
    check_refused(["train", *TINY, "--output", out, *extra], tmp_path, capsys, message)


def test_usage_errors_exit_2(capsys):
    assert cli.main(["train"]) == 2
    assert "--arch" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0


def test_missing_and_malformed_data_folders(tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["train", "--arch", "resnet20", *TINY, "--output", out]
    check_refused([*base, "--data", "imagefolder", str(tmp_path / "none")], tmp_path, capsys, "does not exist")
    check_refused([*base, "--image-size", "32", "--data", "cifar10", str(tmp_path / "none")], tmp_path, capsys,
                  "does not exist")
    root = tmp_path / "images"
    write_imagefolder(str(root))
    os.rename(root / "val", root / "validation")
    check_refused([*base, "--data", "imagefolder", str(root)], tmp_path, capsys, "has no val/ folder",
                  watch=[str(root)])
    os.rename(root / "validation", root / "val")
    (root / "val" / "cat" / "0.png").write_bytes(b"garbage")  # the first image: found before training
    check_refused([*base, "--data", "imagefolder", str(root), "--train-size", "12", "--val-size", "6"], tmp_path,
                  capsys, "cannot read image", watch=[str(root)])


def test_unreadable_image_found_during_training(tmp_path, capsys):
    """An unreadable file deep in the folder surfaces when it is read: same message and exit status,
    and no checkpoint is written for the epoch it interrupted."""
    root = tmp_path / "images"
    write_imagefolder(str(root))
    (root / "val" / "emu" / "1.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert cli.main(["train", "--arch", "resnet20", *TINY, "--train-size", "12", "--val-size", "6", "--batch-size", "4",
                     "--output", str(out), "--data", "imagefolder", str(root)]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and os.path.join("emu", "1.jpg") in err
    assert os.listdir(out) == []


def test_existing_run_is_not_overwritten(finished_run, tmp_path, capsys):
    check_refused(["train", "--arch", "resnet20", *TINY, "--output", finished_run], tmp_path, capsys,
                  "already holds a run (checkpoint.pt, metrics.csv); pass --resume", watch=[finished_run])


def test_checkpoint_of_another_arch(finished_run, tmp_path, capsys):
    out = str(tmp_path / "new")
    check_refused(["train", "--arch", "resnet32", *TINY, "--output", out, "--resume", finished_run], tmp_path,
                  capsys, "was trained as --arch resnet20, not --arch resnet32", watch=[finished_run])
    check_refused(["train", "--arch", "resnet32", *TINY, "--output", finished_run, "--resume"], tmp_path, capsys,
                  "was trained as --arch resnet20, not --arch resnet32", watch=[finished_run])
    check_refused(["train", "--arch", "resnet20", *TINY, "--num-classes", "7", "--output", out, "--resume",
                   finished_run], tmp_path, capsys, "has 10 classes; the data has 7", watch=[finished_run])


def test_bad_checkpoint_files(finished_run, tmp_path, capsys):
    out = str(tmp_path / "new")
    base = ["train", "--arch", "resnet20", *TINY, "--output", out, "--resume"]
    check_refused([*base, str(tmp_path / "missing.pt")], tmp_path, capsys, "missing.pt does not exist")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    check_refused([*base, str(junk)], tmp_path, capsys, "junk.pt is not readable", watch=[str(tmp_path)])
    import torch
    other = tmp_path / "weights.pt"
    torch.save({"model": {}}, other)
    check_refused([*base, str(other)], tmp_path, capsys, "is not a resnet-fast training checkpoint",
                  watch=[str(tmp_path)])
    check_refused(["train", "--arch", "resnet20", *TINY, "--output", out, "--resume"], tmp_path, capsys,
                  "checkpoint.pt does not exist")
